//! The provider's side of leasing as a sans-IO state machine: [`ProviderEngine`].
//!
//! The node feeds it [`ProviderInput`]s with the current time and carries out the
//! [`ProviderOutput`]s it returns, **in order**. A `Persist` must be durable (written and
//! flushed) before any later `Reply` is sent: that is how "durable before acknowledged" holds.

use super::messages::*;
use super::{GpuUnit, LeaseState, ProviderLease};
use crate::bytes::{Bytes, Digest32};
use crate::envelope::{KeyCache, RawEnvelope, Verified, decode_body, open_cached};
use crate::error::Invalid;
use crate::id::{LeaseId, NodeId, OfferId};
use crate::offer::PROTOCOL_VERSION;
use crate::price::Price;
use crate::time::Timestamp;
use crate::wire::LeaseRpcReply;
use ed25519_dalek::SigningKey;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Opaque handle the node uses to route a reply to the stream a request came on.
pub type ReplyToken = u64;

/// Who may lease, and how much.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// If set, only these renters may lease.
    pub allow: Option<BTreeSet<NodeId>>,
    /// These renters may never lease.
    pub deny: BTreeSet<NodeId>,
    /// Most concurrent leases per renter (0 = no limit).
    pub max_leases_per_renter: usize,
}

impl Policy {
    fn permits(&self, renter: &NodeId) -> bool {
        !self.deny.contains(renter) && self.allow.as_ref().is_none_or(|a| a.contains(renter))
    }
}

/// Settings of a [`ProviderEngine`].
#[derive(Clone, Debug)]
pub struct ProviderConfig {
    pub network: String,
    /// How far in the future a request's `issued_at` may be, ms.
    pub max_clock_skew_ms: u64,
    /// How old a request may be, ms. Nonces are remembered this long, so a replay outside the
    /// window is refused as stale and one inside it as a replay.
    pub request_max_age_ms: u64,
    pub policy: Policy,
    /// Whether a start hook runs before a grant (then `RunStartHook` is emitted and the grant
    /// waits for `HookDone`).
    pub start_hook: bool,
}

/// One group of identical GPUs that an offer advertises.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuGroup {
    pub offer_id: OfferId,
    pub gpus: Vec<GpuUnit>,
    pub price: Price,
    pub min_duration_s: u64,
    pub max_duration_s: u64,
}

/// What happens to the provider engine.
#[derive(Debug)]
pub enum ProviderInput<'a> {
    /// The set of GPU groups on offer changed (start-up, price change). Leases on GPUs that
    /// left every group keep running until they end.
    SetGroups(Vec<GpuGroup>),
    /// Leases read back from storage after a restart.
    Restore(Vec<ProviderLease>),
    /// A `LeaseRequest` envelope arrived from `from` (the authenticated transport peer).
    Request { token: ReplyToken, from: NodeId, bytes: &'a [u8] },
    /// A `LeaseRelease` envelope arrived.
    Release { token: ReplyToken, from: NodeId, bytes: &'a [u8] },
    /// A peer asks what became of a lease.
    Status { token: ReplyToken, from: NodeId, lease_id: LeaseId },
    /// The start hook of a lease finished: `Ok(access JSON)` or `Err(why)`.
    HookDone { lease_id: LeaseId, result: Result<String, String> },
    /// A timer set with `ScheduleEnd` fired.
    Timer { lease_id: LeaseId },
    /// The node could not make a `Persist` of this lease durable. It must not have sent any
    /// later output of the same input (no grant left): the lease fails and its GPUs are freed.
    /// `tokens` names every stream that is owed an answer: the input's own token, if it had
    /// one, and the token of every `Reply` the node dropped after the failed write (a grant,
    /// or the answers to held status questions). Each of them, and every request or status
    /// question still waiting on this lease, gets one `provider-error` reject.
    PersistFailed { lease_id: LeaseId, tokens: Vec<ReplyToken>, error: String },
}

/// What the node must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderOutput {
    /// Write this lease and the GPU reservations it implies atomically, and flush.
    Persist(ProviderLease),
    /// Send this reply on the stream of `token`.
    Reply { token: ReplyToken, reply: LeaseRpcReply },
    /// Run the start hook for this lease; answer with `HookDone`.
    RunStartHook(ProviderLease),
    /// Run the end hook for this lease (fire and forget).
    RunEndHook(ProviderLease),
    /// Feed `Timer { lease_id }` at `at`.
    ScheduleEnd { lease_id: LeaseId, at: Timestamp },
    /// The free count of this offer changed: re-advertise it.
    FreeCountChanged(OfferId),
    /// Something worth logging or counting.
    Event(ProviderEvent),
}

/// Notable things for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderEvent {
    Granted {
        lease_id: LeaseId,
        renter: NodeId,
    },
    Rejected {
        renter: Option<NodeId>,
        reason: RejectReason,
        detail: String,
    },
    Ended {
        lease_id: LeaseId,
        state: LeaseState,
    },
    /// A restored lease claims a GPU that another restored lease holds: the store was
    /// inconsistent. The later lease is failed.
    ConflictOnRestore {
        lease_id: LeaseId,
        gpu: String,
    },
}

/// The provider's lease state machine.
#[derive(Debug)]
pub struct ProviderEngine {
    key: SigningKey,
    me: NodeId,
    config: ProviderConfig,
    groups: BTreeMap<OfferId, GpuGroup>,
    leases: HashMap<LeaseId, ProviderLease>,
    /// GPU uuid → the live (starting or active) lease holding it.
    allocated: HashMap<String, LeaseId>,
    /// (renter, nonce) → request issued_at, for replay refusal within the request window.
    seen: HashMap<(NodeId, [u8; 16]), Timestamp>,
    /// `seen` is pruned when it grows past this many entries.
    prune_seen_at: usize,
    /// Reply tokens of requests waiting on a start hook.
    waiting: HashMap<LeaseId, ReplyToken>,
    /// Reply tokens of the renter's `status` questions about a lease whose start hook runs
    /// (at most [`MAX_HELD_STATUS`] a lease): answered with the request's outcome.
    status_waiting: HashMap<LeaseId, Vec<ReplyToken>>,
    /// Decompressed keys of renters.
    keys: KeyCache,
}

/// The smallest `seen` table worth pruning.
const SEEN_PRUNE_MIN: usize = 1024;

/// Most `status` questions held for one starting lease; later ones are answered `unknown`.
pub const MAX_HELD_STATUS: usize = 4;

impl ProviderEngine {
    /// A new engine that signs with `key`.
    pub fn new(key: SigningKey, config: ProviderConfig) -> ProviderEngine {
        let me = NodeId::from_bytes(key.verifying_key().to_bytes());
        ProviderEngine {
            key,
            me,
            config,
            groups: BTreeMap::new(),
            leases: HashMap::new(),
            allocated: HashMap::new(),
            seen: HashMap::new(),
            prune_seen_at: SEEN_PRUNE_MIN,
            waiting: HashMap::new(),
            status_waiting: HashMap::new(),
            keys: KeyCache::new(4096),
        }
    }

    /// This provider's id.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// Free GPUs in an offer's group right now.
    pub fn free_gpus(&self, offer_id: &OfferId) -> u32 {
        self.groups.get(offer_id).map_or(0, |g| self.free_units(g).count() as u32)
    }

    /// The groups on offer.
    pub fn groups(&self) -> impl Iterator<Item = &GpuGroup> {
        self.groups.values()
    }

    /// Every lease this engine knows.
    pub fn leases(&self) -> impl Iterator<Item = &ProviderLease> {
        self.leases.values()
    }

    /// One lease.
    pub fn lease(&self, id: &LeaseId) -> Option<&ProviderLease> {
        self.leases.get(id)
    }

    /// GPU uuid → lease id, for every GPU held by a starting or active lease.
    pub fn allocations(&self) -> &HashMap<String, LeaseId> {
        &self.allocated
    }

    /// The policy in force (it may be changed between requests).
    pub fn policy_mut(&mut self) -> &mut Policy {
        &mut self.config.policy
    }

    fn free_units<'a>(&'a self, g: &'a GpuGroup) -> impl Iterator<Item = &'a GpuUnit> + 'a {
        g.gpus.iter().filter(|u| !self.allocated.contains_key(&u.uuid))
    }

    /// Handles one input at time `now` and returns what to do, in order.
    pub fn handle(&mut self, input: ProviderInput<'_>, now: Timestamp) -> Vec<ProviderOutput> {
        let mut out = Vec::new();
        match input {
            ProviderInput::SetGroups(groups) => {
                let before: BTreeSet<OfferId> = self.groups.keys().copied().collect();
                self.groups = groups.into_iter().map(|g| (g.offer_id, g)).collect();
                for id in before.union(&self.groups.keys().copied().collect()) {
                    out.push(ProviderOutput::FreeCountChanged(*id));
                }
            }
            ProviderInput::Restore(leases) => self.restore(leases, now, &mut out),
            ProviderInput::Request { token, from: _, bytes } => self.on_request(token, bytes, now, &mut out),
            ProviderInput::Release { token, from, bytes } => {
                self.on_release(token, from, bytes, now, &mut out)
            }
            ProviderInput::Status { token, from, lease_id } => {
                let reply = match self.leases.get(&lease_id) {
                    Some(l) if l.renter == from => match (&l.state, &l.receipt, &l.grant) {
                        (_, Some(r), _) => Some(LeaseRpcReply::Receipt(r.clone())),
                        (LeaseState::Active, _, Some(g)) => Some(LeaseRpcReply::Active(g.clone())),
                        // Its start hook runs and no grant exists yet: the answer waits for the
                        // hook, as the request's does. Answering `unknown` would have the renter
                        // give the lease up while the provider goes on to grant it.
                        (LeaseState::Starting, _, _) => {
                            let held = self.status_waiting.entry(lease_id).or_default();
                            if held.len() < MAX_HELD_STATUS {
                                held.push(token);
                                None
                            } else {
                                Some(LeaseRpcReply::Unknown)
                            }
                        }
                        _ => Some(LeaseRpcReply::Unknown),
                    },
                    _ => Some(LeaseRpcReply::Unknown),
                };
                if let Some(reply) = reply {
                    out.push(ProviderOutput::Reply { token, reply });
                }
            }
            ProviderInput::HookDone { lease_id, result } => {
                self.on_hook_done(lease_id, result, now, &mut out)
            }
            ProviderInput::PersistFailed { lease_id, tokens, error } => {
                // Everyone owed an answer about this lease, each once (the input's token is
                // often also the waiting request's).
                let mut owed: Vec<ReplyToken> = Vec::new();
                let waiting = self.waiting.remove(&lease_id);
                let held = self.status_waiting.remove(&lease_id).unwrap_or_default();
                for t in tokens.into_iter().chain(waiting).chain(held) {
                    if !owed.contains(&t) {
                        owed.push(t);
                    }
                }
                if let Some(mut l) = self.leases.remove(&lease_id) {
                    if l.state.is_live() {
                        for g in &l.gpus {
                            if self.allocated.get(&g.uuid) == Some(&lease_id) {
                                self.allocated.remove(&g.uuid);
                            }
                        }
                        l.state = LeaseState::Failed;
                        out.push(ProviderOutput::Persist(l.clone()));
                        out.push(ProviderOutput::RunEndHook(l.clone()));
                        out.push(ProviderOutput::FreeCountChanged(l.offer_id));
                        out.push(ProviderOutput::Event(ProviderEvent::Ended {
                            lease_id,
                            state: LeaseState::Failed,
                        }));
                    }
                    let renter = l.renter;
                    let digest = Digest32::of(&l.request.0);
                    self.leases.insert(lease_id, l);
                    for token in owed {
                        self.reject(
                            token,
                            Some(renter),
                            digest,
                            RejectReason::ProviderError,
                            error.clone(),
                            &mut out,
                        );
                    }
                } else {
                    // Not a lease this engine knows (it persists none it does not know):
                    // still answer, so that no stream waits for its timeout.
                    self.answer_unknown(owed, &mut out);
                }
            }
            ProviderInput::Timer { lease_id } => {
                if let Some(l) = self.leases.get(&lease_id)
                    && l.state == LeaseState::Active
                {
                    if now >= l.end {
                        self.end_lease(lease_id, EndReason::Expired, now, &mut out);
                    } else {
                        out.push(ProviderOutput::ScheduleEnd { lease_id, at: l.end });
                    }
                }
            }
        }
        out
    }

    fn restore(&mut self, leases: Vec<ProviderLease>, now: Timestamp, out: &mut Vec<ProviderOutput>) {
        let mut leases = leases;
        // Deterministic order: oldest first, so on a conflict the earlier grant wins.
        leases.sort_by_key(|l| (l.start, l.lease_id));
        for mut l in leases {
            if l.state.is_live()
                && let Some(gpu) = l.gpus.iter().find(|g| self.allocated.contains_key(&g.uuid))
            {
                out.push(ProviderOutput::Event(ProviderEvent::ConflictOnRestore {
                    lease_id: l.lease_id,
                    gpu: gpu.uuid.clone(),
                }));
                l.state = LeaseState::Failed;
                out.push(ProviderOutput::Persist(l.clone()));
                self.leases.insert(l.lease_id, l);
                continue;
            }
            match l.state {
                LeaseState::Starting => {
                    // The node stopped while the start hook ran: no grant ever left. Fail it,
                    // clean up whatever the hook did, free the GPUs.
                    l.state = LeaseState::Failed;
                    out.push(ProviderOutput::Persist(l.clone()));
                    out.push(ProviderOutput::RunEndHook(l.clone()));
                    out.push(ProviderOutput::FreeCountChanged(l.offer_id));
                    self.leases.insert(l.lease_id, l);
                }
                LeaseState::Active => {
                    for g in &l.gpus {
                        self.allocated.insert(g.uuid.clone(), l.lease_id);
                    }
                    let id = l.lease_id;
                    let end = l.end;
                    self.leases.insert(id, l);
                    if now >= end {
                        self.end_lease(id, EndReason::Expired, now, out);
                    } else {
                        out.push(ProviderOutput::ScheduleEnd { lease_id: id, at: end });
                    }
                }
                _ => {
                    self.leases.insert(l.lease_id, l);
                }
            }
        }
    }

    fn reject(
        &self,
        token: ReplyToken,
        renter: Option<NodeId>,
        request: Digest32,
        reason: RejectReason,
        detail: String,
        out: &mut Vec<ProviderOutput>,
    ) {
        let mut detail = detail;
        if detail.len() > MAX_DETAIL_LEN {
            let mut cut = MAX_DETAIL_LEN;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
        }
        let body = LeaseReject {
            v: PROTOCOL_VERSION,
            network: self.config.network.clone(),
            provider: self.me,
            renter,
            request,
            reason,
            detail: detail.clone(),
        };
        let env = Verified::seal(&self.key, body);
        out.push(ProviderOutput::Reply { token, reply: LeaseRpcReply::Reject(Bytes(env.bytes().to_vec())) });
        out.push(ProviderOutput::Event(ProviderEvent::Rejected { renter, reason, detail }));
    }

    fn on_request(&mut self, token: ReplyToken, bytes: &[u8], now: Timestamp, out: &mut Vec<ProviderOutput>) {
        let digest = Digest32::of(bytes);
        let req = match RawEnvelope::parse(bytes)
            .and_then(|raw| open_cached::<LeaseRequest>(bytes, raw, &mut self.keys))
        {
            Ok(r) => r,
            Err(e) => {
                // Name the renter if the (unverified) envelope can be read at all.
                let renter = RawEnvelope::parse(bytes).ok().map(|r| r.signer);
                let reason = match e {
                    Invalid::BadSignature | Invalid::BadSignerKey | Invalid::SignerMismatch => {
                        RejectReason::BadSignature
                    }
                    _ => RejectReason::InvalidRequest,
                };
                return self.reject(token, renter, digest, reason, e.to_string(), out);
            }
        };
        let r = req.body();
        let units = match self.admit(r, now) {
            Ok(units) => units,
            Err((reason, detail)) => return self.reject(token, Some(r.renter), digest, reason, detail, out),
        };
        let lease_id = LeaseId::derive(&self.me, &r.renter, &r.nonce.0);
        let price = self.groups.get(&r.offer_id).map(|g| g.price).unwrap_or(r.price);
        let lease = ProviderLease {
            lease_id,
            renter: r.renter,
            offer_id: r.offer_id,
            gpus: units,
            price,
            start: now,
            end: now.plus_secs(r.duration_s),
            state: LeaseState::Starting,
            request: Bytes(bytes.to_vec()),
            ssh_key: r.ssh_key.clone(),
            access: String::new(),
            grant: None,
            receipt: None,
        };
        for g in &lease.gpus {
            self.allocated.insert(g.uuid.clone(), lease_id);
        }
        out.push(ProviderOutput::FreeCountChanged(lease.offer_id));
        if self.config.start_hook {
            out.push(ProviderOutput::Persist(lease.clone()));
            out.push(ProviderOutput::RunStartHook(lease.clone()));
            self.waiting.insert(lease_id, token);
            self.leases.insert(lease_id, lease);
        } else {
            self.leases.insert(lease_id, lease);
            self.activate(lease_id, token, "{}".into(), out);
        }
    }

    /// Checks a verified request against network, freshness, replay, policy, offer, price,
    /// duration and capacity. Returns the GPUs to reserve, or why not.
    fn admit(&mut self, r: &LeaseRequest, now: Timestamp) -> Result<Vec<GpuUnit>, (RejectReason, String)> {
        if r.v != PROTOCOL_VERSION {
            return Err((RejectReason::InvalidRequest, format!("unsupported version {}", r.v)));
        }
        if r.network != self.config.network {
            return Err((
                RejectReason::NetworkMismatch,
                format!("this provider is on network `{}`", self.config.network),
            ));
        }
        if r.provider != self.me {
            return Err((RejectReason::InvalidRequest, "request is addressed to another provider".into()));
        }
        if r.issued_at.0 > now.0.saturating_add(self.config.max_clock_skew_ms) {
            return Err((
                RejectReason::InvalidRequest,
                "request issued in the future: check your clock".into(),
            ));
        }
        if r.issued_at.0.saturating_add(self.config.request_max_age_ms) < now.0 {
            return Err((RejectReason::Replayed, "request is too old to be fresh".into()));
        }
        let lease_id = LeaseId::derive(&self.me, &r.renter, &r.nonce.0);
        if self.seen.contains_key(&(r.renter, r.nonce.0)) || self.leases.contains_key(&lease_id) {
            return Err((RejectReason::Replayed, "this request's nonce was already used".into()));
        }
        self.prune_seen(now);
        self.seen.insert((r.renter, r.nonce.0), r.issued_at);
        if !self.config.policy.permits(&r.renter) {
            return Err((RejectReason::DeniedByPolicy, "renter not allowed by this provider".into()));
        }
        if r.gpus == 0 || r.gpus > MAX_LEASE_GPUS {
            return Err((RejectReason::InvalidRequest, format!("cannot lease {} GPUs", r.gpus)));
        }
        if r.ssh_key.as_ref().is_some_and(|k| k.len() > MAX_SSH_KEY_LEN) {
            return Err((RejectReason::InvalidRequest, "ssh key too long".into()));
        }
        let Some(group) = self.groups.get(&r.offer_id) else {
            return Err((RejectReason::OfferUnknownOrExpired, format!("no offer {}", r.offer_id)));
        };
        if group.price > r.max_price {
            return Err((
                RejectReason::PriceAboveMax,
                format!("price is {} USD/GPU-h, above your max {}", group.price, r.max_price),
            ));
        }
        if group.price != r.price {
            return Err((
                RejectReason::PriceChanged,
                format!("price is now {} USD/GPU-h, not {}", group.price, r.price),
            ));
        }
        if r.duration_s < group.min_duration_s || r.duration_s > group.max_duration_s {
            return Err((
                RejectReason::DurationOutOfRange,
                format!(
                    "duration {}s is outside {}s..={}s",
                    r.duration_s, group.min_duration_s, group.max_duration_s
                ),
            ));
        }
        let max_per = self.config.policy.max_leases_per_renter;
        if max_per > 0 {
            let held = self.leases.values().filter(|l| l.renter == r.renter && l.state.is_live()).count();
            if held >= max_per {
                return Err((RejectReason::TooManyLeases, format!("limit is {max_per} concurrent leases")));
            }
        }
        let units: Vec<GpuUnit> = self.free_units(group).take(r.gpus as usize).cloned().collect();
        if units.len() < r.gpus as usize {
            return Err((RejectReason::NoCapacity, format!("{} free, {} asked", units.len(), r.gpus)));
        }
        Ok(units)
    }

    fn activate(
        &mut self,
        lease_id: LeaseId,
        token: ReplyToken,
        access: String,
        out: &mut Vec<ProviderOutput>,
    ) {
        let Some(l) = self.leases.get_mut(&lease_id) else { return };
        let grant = LeaseGrant {
            v: PROTOCOL_VERSION,
            network: self.config.network.clone(),
            lease_id,
            provider: self.me,
            renter: l.renter,
            offer_id: l.offer_id,
            request: Digest32::of(&l.request.0),
            gpu_uuids: l.gpus.iter().map(|g| g.uuid.clone()).collect(),
            gpu_indices: l.gpus.iter().map(|g| g.index).collect(),
            start: l.start,
            end: l.end,
            price: l.price,
            access: access.clone(),
        };
        let env = Bytes(Verified::seal(&self.key, grant).bytes().to_vec());
        l.state = LeaseState::Active;
        l.access = access;
        l.grant = Some(env.clone());
        out.push(ProviderOutput::Persist(l.clone()));
        out.push(ProviderOutput::Reply { token, reply: LeaseRpcReply::Grant(env) });
        out.push(ProviderOutput::ScheduleEnd { lease_id, at: l.end });
        out.push(ProviderOutput::Event(ProviderEvent::Granted { lease_id, renter: l.renter }));
    }

    fn on_hook_done(
        &mut self,
        lease_id: LeaseId,
        result: Result<String, String>,
        now: Timestamp,
        out: &mut Vec<ProviderOutput>,
    ) {
        let held = self.status_waiting.remove(&lease_id).unwrap_or_default();
        let (Some(token), Some(l)) = (self.waiting.remove(&lease_id), self.leases.get(&lease_id)) else {
            return self.answer_unknown(held, out);
        };
        if l.state != LeaseState::Starting {
            return self.answer_unknown(held, out);
        }
        match result {
            Ok(access) if access.len() <= MAX_ACCESS_LEN => {
                // The hook may have run past the lease's start: the lease still gets its full
                // duration from the moment it is granted.
                let dur = l.end.millis_since(l.start);
                let l = self.leases.get_mut(&lease_id).expect("lease checked above");
                l.start = now;
                l.end = now.plus_millis(dur);
                self.activate(lease_id, token, access, out);
                // The renter's status questions get what a status gets for an active lease.
                let grant = self.leases.get(&lease_id).and_then(|l| l.grant.clone());
                for token in held {
                    let reply = grant.clone().map_or(LeaseRpcReply::Unknown, LeaseRpcReply::Active);
                    out.push(ProviderOutput::Reply { token, reply });
                }
            }
            other => {
                let why = match other {
                    Ok(_) => "start hook printed more access details than allowed".to_string(),
                    Err(e) => e,
                };
                let mut l = self.leases.remove(&lease_id).expect("lease checked above");
                for g in &l.gpus {
                    self.allocated.remove(&g.uuid);
                }
                l.state = LeaseState::Failed;
                let renter = l.renter;
                let digest = Digest32::of(&l.request.0);
                out.push(ProviderOutput::Persist(l.clone()));
                out.push(ProviderOutput::RunEndHook(l.clone()));
                out.push(ProviderOutput::FreeCountChanged(l.offer_id));
                out.push(ProviderOutput::Event(ProviderEvent::Ended { lease_id, state: LeaseState::Failed }));
                self.leases.insert(lease_id, l);
                for token in held {
                    self.reject(token, Some(renter), digest, RejectReason::ProviderError, why.clone(), out);
                }
                self.reject(token, Some(renter), digest, RejectReason::ProviderError, why, out);
            }
        }
    }

    /// Answers held status questions `unknown` (their lease is no longer starting).
    fn answer_unknown(&self, tokens: Vec<ReplyToken>, out: &mut Vec<ProviderOutput>) {
        for token in tokens {
            out.push(ProviderOutput::Reply { token, reply: LeaseRpcReply::Unknown });
        }
    }

    fn on_release(
        &mut self,
        token: ReplyToken,
        from: NodeId,
        bytes: &[u8],
        now: Timestamp,
        out: &mut Vec<ProviderOutput>,
    ) {
        let digest = Digest32::of(bytes);
        let rel = match RawEnvelope::parse(bytes)
            .and_then(|raw| open_cached::<LeaseRelease>(bytes, raw, &mut self.keys))
        {
            Ok(r) => r,
            Err(e) => {
                let renter = RawEnvelope::parse(bytes).ok().map(|r| r.signer);
                let reason = match e {
                    Invalid::BadSignature | Invalid::BadSignerKey | Invalid::SignerMismatch => {
                        RejectReason::BadSignature
                    }
                    _ => RejectReason::InvalidRequest,
                };
                return self.reject(token, renter, digest, reason, e.to_string(), out);
            }
        };
        let _ = from;
        let r = rel.body();
        if r.network != self.config.network {
            return self.reject(
                token,
                Some(r.renter),
                digest,
                RejectReason::NetworkMismatch,
                String::new(),
                out,
            );
        }
        let Some(l) = self.leases.get(&r.lease_id) else {
            return self.reject(
                token,
                Some(r.renter),
                digest,
                RejectReason::UnknownLease,
                r.lease_id.to_string(),
                out,
            );
        };
        if l.renter != r.renter || r.provider != self.me {
            return self.reject(
                token,
                Some(r.renter),
                digest,
                RejectReason::NotLeaseOwner,
                r.lease_id.to_string(),
                out,
            );
        }
        match l.state {
            LeaseState::Active => {
                self.end_lease(r.lease_id, EndReason::Released, now, out);
                if let Some(receipt) = self.leases.get(&r.lease_id).and_then(|l| l.receipt.clone()) {
                    out.push(ProviderOutput::Reply { token, reply: LeaseRpcReply::Receipt(receipt) });
                }
            }
            _ => match &l.receipt {
                // Already ended: the release is answered with the receipt again (idempotent).
                Some(receipt) => {
                    out.push(ProviderOutput::Reply { token, reply: LeaseRpcReply::Receipt(receipt.clone()) })
                }
                None => self.reject(
                    token,
                    Some(r.renter),
                    digest,
                    RejectReason::UnknownLease,
                    format!("lease is {}", l.state.as_str()),
                    out,
                ),
            },
        }
    }

    fn end_lease(
        &mut self,
        lease_id: LeaseId,
        why: EndReason,
        now: Timestamp,
        out: &mut Vec<ProviderOutput>,
    ) {
        let Some(l) = self.leases.get_mut(&lease_id) else { return };
        if l.state != LeaseState::Active {
            return;
        }
        let end = now.min(l.end);
        let receipt = UsageReceipt {
            v: PROTOCOL_VERSION,
            network: self.config.network.clone(),
            lease_id,
            provider: self.me,
            renter: l.renter,
            offer_id: l.offer_id,
            gpu_uuids: l.gpus.iter().map(|g| g.uuid.clone()).collect(),
            start: l.start,
            end,
            price: l.price,
            amount: l.price.cost(l.gpus.len() as u32, end.millis_since(l.start)),
            ended_by: why,
        };
        l.receipt = Some(Bytes(Verified::seal(&self.key, receipt).bytes().to_vec()));
        l.state = match why {
            EndReason::Released => LeaseState::Released,
            EndReason::Expired => LeaseState::Expired,
        };
        l.end = end;
        for g in &l.gpus {
            self.allocated.remove(&g.uuid);
        }
        out.push(ProviderOutput::Persist(l.clone()));
        out.push(ProviderOutput::RunEndHook(l.clone()));
        out.push(ProviderOutput::FreeCountChanged(l.offer_id));
        out.push(ProviderOutput::Event(ProviderEvent::Ended { lease_id, state: l.state }));
    }

    /// Forgets nonces too old to be replayed. Runs when the table has doubled since the last
    /// pass (at least 1024 entries), so a busy provider whose nonces are all recent does not
    /// scan them all on every request.
    fn prune_seen(&mut self, now: Timestamp) {
        let horizon = self.config.request_max_age_ms + self.config.max_clock_skew_ms;
        if self.seen.len() > self.prune_seen_at {
            self.seen.retain(|_, at| at.0.saturating_add(horizon) >= now.0);
            self.prune_seen_at = (2 * self.seen.len()).max(SEEN_PRUNE_MIN);
        }
    }
}

/// Decodes a reply's envelope body without verification (for display of our own store).
pub fn peek_body<T: crate::envelope::Body>(bytes: &[u8]) -> Option<T> {
    let raw = RawEnvelope::parse(bytes).ok()?;
    decode_body(raw.body).ok()
}
