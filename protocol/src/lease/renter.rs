//! The renter's side of leasing as a sans-IO state machine: [`RenterEngine`].
//!
//! It signs requests and releases, checks every reply against what it asked (signer, request
//! digest, lease id, GPU count, price, duration), and asks the provider for a receipt when a
//! lease's time is up. Outputs are carried out in order; see [`RenterOutput::Persist`] for
//! what must be durable when.

use super::messages::*;
use super::{LeaseState, RenterLease};
use crate::bytes::{Bytes, Digest32, Nonce};
use crate::envelope::{Body, KeyCache, RawEnvelope, Verified, open_cached};
use crate::error::Invalid;
use crate::id::{LeaseId, NodeId, OfferId};
use crate::offer::PROTOCOL_VERSION;
use crate::price::Price;
use crate::time::Timestamp;
use crate::wire::{LeaseRpc, LeaseRpcReply};
use ed25519_dalek::SigningKey;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

/// Settings of a [`RenterEngine`].
#[derive(Clone, Debug)]
pub struct RenterConfig {
    pub network: String,
    /// How long after a lease's end to keep asking for its receipt before recording it as
    /// expired without one, ms.
    pub receipt_grace_ms: u64,
    /// Pause between receipt checks, ms.
    pub status_retry_ms: u64,
}

/// What the renter wants to lease.
#[derive(Clone, Debug)]
pub struct LeaseAsk {
    pub provider: NodeId,
    pub offer_id: OfferId,
    /// The price the renter saw in the offer.
    pub price: Price,
    pub max_price: Price,
    pub gpus: u32,
    pub duration_s: u64,
    pub ssh_key: Option<String>,
    /// Fresh randomness from the caller (the engine never draws its own).
    pub nonce: Nonce,
}

/// What happens to the renter engine.
#[derive(Debug)]
pub enum RenterInput {
    /// Start a lease.
    Lease(LeaseAsk),
    /// The provider answered a message we sent about `lease_id`.
    Reply { lease_id: LeaseId, reply: LeaseRpcReply },
    /// A message about `lease_id` could not be delivered or answered.
    SendFailed { lease_id: LeaseId, error: String },
    /// End a lease early.
    Release { lease_id: LeaseId },
    /// A timer set with `ScheduleTimer` fired.
    Timer { lease_id: LeaseId },
    /// Leases read back from storage after a restart.
    Restore(Vec<RenterLease>),
}

/// What the node must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum RenterOutput {
    /// Store this record of a lease. When it must be on disk depends on its state:
    ///
    /// - `Requested`: before a `Granted` event for it is reported, but not before the
    ///   `Send` that follows it (the write may run while the request travels). A restarted
    ///   engine asks the provider `status` for every `Requested` lease it restores.
    /// - `Active`: need not be made durable at all. The `Requested` record is; a restart
    ///   that finds only it asks `status`, and the provider (whose grant was durable before
    ///   it was sent) answers with the same signed grant.
    /// - every other state: before the event that reports it.
    Persist(RenterLease),
    Send {
        provider: NodeId,
        lease_id: LeaseId,
        rpc: LeaseRpc,
    },
    ScheduleTimer {
        lease_id: LeaseId,
        at: Timestamp,
    },
    Event(RenterEvent),
}

/// Outcomes worth telling the user about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenterEvent {
    Granted(LeaseId),
    Rejected {
        lease_id: LeaseId,
        reason: RejectReason,
        detail: String,
    },
    Failed {
        lease_id: LeaseId,
        why: String,
    },
    Ended {
        lease_id: LeaseId,
        state: LeaseState,
    },
    /// The provider refused a release.
    ReleaseRefused {
        lease_id: LeaseId,
        reason: RejectReason,
        detail: String,
    },
    /// The provider sent something that does not check out (it is not trusted).
    BadReply {
        lease_id: LeaseId,
        why: String,
    },
}

/// Mistakes in a local command (never caused by a peer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RenterError {
    #[error("no lease {0} on this node")]
    UnknownLease(LeaseId),
    #[error("lease {0} is {1}, not active")]
    NotActive(LeaseId, &'static str),
    #[error("a lease with this nonce already exists: {0}")]
    DuplicateNonce(LeaseId),
    #[error("cannot lease zero GPUs")]
    ZeroGpus,
}

/// The renter's lease state machine.
#[derive(Debug)]
pub struct RenterEngine {
    key: SigningKey,
    me: NodeId,
    config: RenterConfig,
    leases: HashMap<LeaseId, RenterLease>,
    /// Requested leases whose request went unanswered and that were asked about once.
    status_asked: HashSet<LeaseId>,
    /// Requested leases whose request was sent a second time, after the provider answered
    /// `unknown` to the status question that followed a failed send.
    resent: HashSet<LeaseId>,
    /// Requested leases restored after a restart: the user may have been told of a grant, so
    /// the engine keeps asking `status` until the provider answers or no lease made from the
    /// request could still be running.
    recovering: HashSet<LeaseId>,
    /// Active leases past their end that were asked `status` since this engine started: one
    /// is given up without a receipt only after the provider was asked at least once (a
    /// renter that was down through the grace period still asks).
    receipt_asked: HashSet<LeaseId>,
    /// Decompressed keys of providers (a cache, hence shared mutability behind `&self`).
    keys: RefCell<KeyCache>,
}

impl RenterEngine {
    /// A new engine that signs with `key`.
    pub fn new(key: SigningKey, config: RenterConfig) -> RenterEngine {
        let me = NodeId::from_bytes(key.verifying_key().to_bytes());
        RenterEngine {
            key,
            me,
            config,
            leases: HashMap::new(),
            status_asked: HashSet::new(),
            resent: HashSet::new(),
            recovering: HashSet::new(),
            receipt_asked: HashSet::new(),
            keys: RefCell::new(KeyCache::new(4096)),
        }
    }

    /// One lease.
    pub fn lease(&self, id: &LeaseId) -> Option<&RenterLease> {
        self.leases.get(id)
    }

    /// Every lease.
    pub fn leases(&self) -> impl Iterator<Item = &RenterLease> {
        self.leases.values()
    }

    /// Handles one input at `now`. Errors only for local commands that make no sense.
    pub fn handle(&mut self, input: RenterInput, now: Timestamp) -> Result<Vec<RenterOutput>, RenterError> {
        let mut out = Vec::new();
        match input {
            RenterInput::Lease(ask) => self.start(ask, now, &mut out)?,
            RenterInput::Reply { lease_id, reply } => self.on_reply(lease_id, reply, now, &mut out),
            RenterInput::SendFailed { lease_id, error } => {
                self.on_send_failed(lease_id, error, now, &mut out)
            }
            RenterInput::Release { lease_id } => {
                let l = self.leases.get(&lease_id).ok_or(RenterError::UnknownLease(lease_id))?;
                if l.state != LeaseState::Active {
                    return Err(RenterError::NotActive(lease_id, l.state.as_str()));
                }
                let body = LeaseRelease {
                    v: PROTOCOL_VERSION,
                    network: self.config.network.clone(),
                    lease_id,
                    renter: self.me,
                    provider: l.provider,
                    issued_at: now,
                };
                let env = Verified::seal(&self.key, body);
                out.push(RenterOutput::Send {
                    provider: l.provider,
                    lease_id,
                    rpc: LeaseRpc::Release(Bytes(env.bytes().to_vec())),
                });
            }
            RenterInput::Timer { lease_id } => self.on_timer(lease_id, now, &mut out),
            RenterInput::Restore(leases) => {
                for l in leases {
                    let id = l.lease_id;
                    match l.state {
                        // We stopped before the answer came, or before the grant's record
                        // reached the disk: ask the provider what happened.
                        LeaseState::Requested => {
                            self.recovering.insert(id);
                            out.push(RenterOutput::Send {
                                provider: l.provider,
                                lease_id: id,
                                rpc: LeaseRpc::Status(id),
                            })
                        }
                        LeaseState::Active => {
                            out.push(RenterOutput::ScheduleTimer { lease_id: id, at: l.end.unwrap_or(now) })
                        }
                        _ => {}
                    }
                    self.leases.insert(id, l);
                }
            }
        }
        // A restored request stops being recovered, and a retried one stops being tracked,
        // once the provider has answered it.
        let leases = &self.leases;
        let requested = |id: &LeaseId| leases.get(id).is_some_and(|l| l.state == LeaseState::Requested);
        self.recovering.retain(requested);
        self.status_asked.retain(requested);
        self.resent.retain(requested);
        let active = |id: &LeaseId| leases.get(id).is_some_and(|l| l.state == LeaseState::Active);
        self.receipt_asked.retain(active);
        Ok(out)
    }

    fn start(
        &mut self,
        ask: LeaseAsk,
        now: Timestamp,
        out: &mut Vec<RenterOutput>,
    ) -> Result<(), RenterError> {
        if ask.gpus == 0 {
            return Err(RenterError::ZeroGpus);
        }
        let lease_id = LeaseId::derive(&ask.provider, &self.me, &ask.nonce.0);
        if self.leases.contains_key(&lease_id) {
            return Err(RenterError::DuplicateNonce(lease_id));
        }
        let req = LeaseRequest {
            v: PROTOCOL_VERSION,
            network: self.config.network.clone(),
            renter: self.me,
            provider: ask.provider,
            offer_id: ask.offer_id,
            gpus: ask.gpus,
            duration_s: ask.duration_s,
            price: ask.price,
            max_price: ask.max_price,
            nonce: ask.nonce,
            issued_at: now,
            ssh_key: ask.ssh_key,
        };
        let env = Bytes(Verified::seal(&self.key, req).bytes().to_vec());
        let lease = RenterLease {
            lease_id,
            provider: ask.provider,
            offer_id: ask.offer_id,
            gpus: ask.gpus,
            duration_s: ask.duration_s,
            price: ask.price,
            state: LeaseState::Requested,
            requested_at: now,
            request: env.clone(),
            gpu_uuids: Vec::new(),
            start: None,
            end: None,
            access: String::new(),
            grant: None,
            receipt: None,
            reason: None,
            reject: None,
        };
        out.push(RenterOutput::Persist(lease.clone()));
        out.push(RenterOutput::Send { provider: ask.provider, lease_id, rpc: LeaseRpc::Request(env) });
        self.leases.insert(lease_id, lease);
        Ok(())
    }

    /// Opens a reply envelope and checks it is the provider's.
    fn open_from<T: Body>(&self, provider: &NodeId, bytes: &[u8]) -> Result<Verified<T>, String> {
        let mut keys = self.keys.borrow_mut();
        let v = RawEnvelope::parse(bytes)
            .and_then(|raw| open_cached::<T>(bytes, raw, &mut keys))
            .map_err(|e: Invalid| e.to_string())?;
        if v.signer() != provider {
            return Err("signed by someone other than the provider".into());
        }
        Ok(v)
    }

    fn check_grant(&self, l: &RenterLease, bytes: &[u8]) -> Result<Verified<LeaseGrant>, String> {
        let g = self.open_from::<LeaseGrant>(&l.provider, bytes)?;
        let ok = g.request == Digest32::of(&l.request.0)
            && g.lease_id == l.lease_id
            && g.renter == self.me
            && g.network == self.config.network
            && g.offer_id == l.offer_id
            && g.gpu_uuids.len() == l.gpus as usize
            && g.gpu_indices.len() == l.gpus as usize
            && g.price == l.price
            && g.end.millis_since(g.start) == l.duration_s.saturating_mul(1000);
        if ok { Ok(g) } else { Err("grant does not match the request".into()) }
    }

    /// A receipt must settle this lease as it was granted: same offer, price and GPUs, within
    /// the granted time (or, when no grant reached us, as many GPUs and no longer than we
    /// asked for), with the amount its own figures give.
    fn check_receipt(&self, l: &RenterLease, bytes: &[u8]) -> Result<Verified<UsageReceipt>, String> {
        let r = self.open_from::<UsageReceipt>(&l.provider, bytes)?;
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        let as_granted = match (l.start, l.end) {
            (Some(start), Some(end)) if l.grant.is_some() => {
                sorted(&r.gpu_uuids) == sorted(&l.gpu_uuids) && r.start >= start && r.end <= end
            }
            _ => {
                r.gpu_uuids.len() == l.gpus as usize
                    && r.end.millis_since(r.start) <= l.duration_s.saturating_mul(1000)
            }
        };
        let ok = r.lease_id == l.lease_id
            && r.renter == self.me
            && r.network == self.config.network
            && r.offer_id == l.offer_id
            && r.price == l.price
            && r.start <= r.end
            && as_granted
            && r.amount == r.price.cost(r.gpu_uuids.len() as u32, r.end.millis_since(r.start));
        if ok { Ok(r) } else { Err("receipt does not match the lease".into()) }
    }

    fn on_reply(
        &mut self,
        lease_id: LeaseId,
        reply: LeaseRpcReply,
        now: Timestamp,
        out: &mut Vec<RenterOutput>,
    ) {
        let Some(l) = self.leases.get(&lease_id) else { return };
        let state = l.state;
        match (state, reply) {
            (LeaseState::Requested, LeaseRpcReply::Grant(b) | LeaseRpcReply::Active(b)) => {
                match self.check_grant(l, &b.0) {
                    Ok(g) => self.activate(lease_id, g, b, out),
                    Err(why) => self.fail(lease_id, format!("provider sent a bad grant: {why}"), out),
                }
            }
            (LeaseState::Requested, LeaseRpcReply::Reject(b)) => {
                match self.open_from::<LeaseReject>(&l.provider, &b.0) {
                    Ok(r)
                        if r.reason == RejectReason::Replayed
                            && self.resent.contains(&lease_id)
                            && r.request == Digest32::of(&l.request.0) =>
                    {
                        // The provider saw the first copy after all, refused it, and that
                        // answer was lost (or the copy came too late); its reason is unknown.
                        let why = format!(
                            "the provider refused a second copy of this request ({}): it had \
                             probably already received this request and its answer was lost; \
                             lease again",
                            r.detail
                        );
                        self.fail(lease_id, why, out)
                    }
                    Ok(r) if r.request == Digest32::of(&l.request.0) => {
                        let l = self.leases.get_mut(&lease_id).expect("lease looked up above");
                        l.state = LeaseState::Rejected;
                        l.reject = Some(r.reason);
                        l.reason = Some(if r.detail.is_empty() {
                            r.reason.explain().to_string()
                        } else {
                            format!("{}: {}", r.reason.explain(), r.detail)
                        });
                        out.push(RenterOutput::Persist(l.clone()));
                        out.push(RenterOutput::Event(RenterEvent::Rejected {
                            lease_id,
                            reason: r.reason,
                            detail: r.detail.clone(),
                        }));
                    }
                    Ok(_) => self.fail(lease_id, "provider sent a reject for another request".into(), out),
                    Err(why) => self.fail(lease_id, format!("provider sent a bad reject: {why}"), out),
                }
            }
            (LeaseState::Requested, LeaseRpcReply::Receipt(b))
            | (LeaseState::Active, LeaseRpcReply::Receipt(b)) => match self.check_receipt(l, &b.0) {
                Ok(r) => {
                    let l = self.leases.get_mut(&lease_id).expect("lease looked up above");
                    l.state = match r.ended_by {
                        EndReason::Released => LeaseState::Released,
                        EndReason::Expired => LeaseState::Expired,
                    };
                    l.start = Some(r.start);
                    l.end = Some(r.end);
                    l.gpu_uuids = r.gpu_uuids.clone();
                    l.receipt = Some(b);
                    out.push(RenterOutput::Persist(l.clone()));
                    out.push(RenterOutput::Event(RenterEvent::Ended { lease_id, state: l.state }));
                }
                // A request that brings a bad receipt has no other answer coming: fail it, as a
                // bad grant would. An active lease keeps running.
                Err(why) if state == LeaseState::Requested => {
                    self.fail(lease_id, format!("provider sent a bad receipt: {why}"), out)
                }
                Err(why) => out.push(RenterOutput::Event(RenterEvent::BadReply {
                    lease_id,
                    why: format!("bad receipt: {why}"),
                })),
            },
            // Asked after a failed send, and the provider holds no lease from the request: it
            // never arrived (say, on a connection that was closing), or it was refused and the
            // answer lost. Send the same request once more; a provider that saw it refuses the
            // copy as `replayed` (above). A restored request is old: no second copy for it.
            (LeaseState::Requested, LeaseRpcReply::Unknown)
                if !self.recovering.contains(&lease_id) && !self.resent.contains(&lease_id) =>
            {
                let (provider, rpc) = (l.provider, LeaseRpc::Request(l.request.clone()));
                self.resent.insert(lease_id);
                out.push(RenterOutput::Send { provider, lease_id, rpc });
            }
            (LeaseState::Requested, LeaseRpcReply::Unknown) => {
                self.fail(lease_id, "the provider has no record of this request".into(), out)
            }
            (LeaseState::Active, LeaseRpcReply::Active(_)) => {
                // Still running by the provider's clock: ask again later.
                let end = l.end.unwrap_or(now);
                let at = if now < end { end } else { now.plus_millis(self.config.status_retry_ms) };
                out.push(RenterOutput::ScheduleTimer { lease_id, at });
            }
            (LeaseState::Active, LeaseRpcReply::Reject(b)) => {
                match self.open_from::<LeaseReject>(&l.provider, &b.0) {
                    Ok(r) => out.push(RenterOutput::Event(RenterEvent::ReleaseRefused {
                        lease_id,
                        reason: r.reason,
                        detail: r.detail.clone(),
                    })),
                    Err(why) => out.push(RenterOutput::Event(RenterEvent::BadReply { lease_id, why })),
                }
            }
            (LeaseState::Active, LeaseRpcReply::Unknown) => {
                if l.end.is_some_and(|e| now >= e) {
                    self.finish_without_receipt(lease_id, "the provider has no record of this lease", out);
                }
            }
            (_, other) => out.push(RenterOutput::Event(RenterEvent::BadReply {
                lease_id,
                why: format!("unexpected reply {} for a {} lease", reply_name(&other), state.as_str()),
            })),
        }
        // An active lease past its end that this reply did not settle (a bad receipt, a
        // reject, a reply that makes no sense): ask again later, so that it ends with a
        // receipt or, past the grace period, without one, instead of staying active for good.
        if let Some(l) = self.leases.get(&lease_id)
            && l.state == LeaseState::Active
            && l.end.is_some_and(|end| now >= end)
            && !out
                .iter()
                .any(|o| matches!(o, RenterOutput::ScheduleTimer { lease_id: id, .. } if *id == lease_id))
        {
            out.push(RenterOutput::ScheduleTimer {
                lease_id,
                at: now.plus_millis(self.config.status_retry_ms),
            });
        }
    }

    fn activate(
        &mut self,
        lease_id: LeaseId,
        g: Verified<LeaseGrant>,
        bytes: Bytes,
        out: &mut Vec<RenterOutput>,
    ) {
        let l = self.leases.get_mut(&lease_id).expect("caller looked the lease up");
        l.state = LeaseState::Active;
        l.gpu_uuids = g.gpu_uuids.clone();
        l.start = Some(g.start);
        l.end = Some(g.end);
        l.access = g.access.clone();
        l.grant = Some(bytes);
        out.push(RenterOutput::Persist(l.clone()));
        out.push(RenterOutput::ScheduleTimer { lease_id, at: g.end });
        out.push(RenterOutput::Event(RenterEvent::Granted(lease_id)));
    }

    fn fail(&mut self, lease_id: LeaseId, why: String, out: &mut Vec<RenterOutput>) {
        let l = self.leases.get_mut(&lease_id).expect("caller looked the lease up");
        l.state = LeaseState::Failed;
        l.reason = Some(why.clone());
        out.push(RenterOutput::Persist(l.clone()));
        out.push(RenterOutput::Event(RenterEvent::Failed { lease_id, why }));
    }

    fn finish_without_receipt(&mut self, lease_id: LeaseId, why: &str, out: &mut Vec<RenterOutput>) {
        let l = self.leases.get_mut(&lease_id).expect("caller looked the lease up");
        l.state = LeaseState::Expired;
        l.reason = Some(format!("ended without a receipt: {why}"));
        out.push(RenterOutput::Persist(l.clone()));
        out.push(RenterOutput::Event(RenterEvent::Ended { lease_id, state: LeaseState::Expired }));
    }

    fn on_send_failed(
        &mut self,
        lease_id: LeaseId,
        error: String,
        now: Timestamp,
        out: &mut Vec<RenterOutput>,
    ) {
        let Some(l) = self.leases.get(&lease_id) else { return };
        match l.state {
            // Restored: keep asking while a lease made from this request could still run.
            LeaseState::Requested if self.recovering.contains(&lease_id) => {
                if now >= self.latest_possible_end(l) {
                    self.recovering.remove(&lease_id);
                    self.fail(
                        lease_id,
                        format!(
                            "the provider could not be reached since this node restarted, and any lease \
                             made from this request would have ended by now: {error}"
                        ),
                        out,
                    );
                } else {
                    let at = now.plus_millis(self.config.status_retry_ms);
                    out.push(RenterOutput::ScheduleTimer { lease_id, at });
                }
            }
            // The request may have been granted and the answer lost (or the provider crashed
            // after making the grant durable): ask once what became of it.
            LeaseState::Requested if !self.status_asked.contains(&lease_id) => {
                let provider = l.provider;
                self.status_asked.insert(lease_id);
                out.push(RenterOutput::Send { provider, lease_id, rpc: LeaseRpc::Status(lease_id) })
            }
            LeaseState::Requested => {
                self.fail(lease_id, format!("no answer from the provider: {error}"), out)
            }
            LeaseState::Active => {
                let end = l.end.unwrap_or(now);
                if now >= end.plus_millis(self.config.receipt_grace_ms) {
                    self.finish_without_receipt(lease_id, "the provider could not be reached", out);
                } else if now >= end {
                    out.push(RenterOutput::ScheduleTimer {
                        lease_id,
                        at: now.plus_millis(self.config.status_retry_ms),
                    });
                } else {
                    // A release that did not get through: the lease runs on; say so.
                    out.push(RenterOutput::Event(RenterEvent::BadReply {
                        lease_id,
                        why: format!("could not reach the provider: {error}"),
                    }));
                }
            }
            _ => {}
        }
    }

    fn on_timer(&mut self, lease_id: LeaseId, now: Timestamp, out: &mut Vec<RenterOutput>) {
        let Some(l) = self.leases.get(&lease_id) else { return };
        if l.state == LeaseState::Requested && self.recovering.contains(&lease_id) {
            out.push(RenterOutput::Send { provider: l.provider, lease_id, rpc: LeaseRpc::Status(lease_id) });
            return;
        }
        if l.state != LeaseState::Active {
            return;
        }
        let end = l.end.unwrap_or(now);
        if now < end {
            out.push(RenterOutput::ScheduleTimer { lease_id, at: end });
        } else if now >= end.plus_millis(self.config.receipt_grace_ms)
            && self.receipt_asked.contains(&lease_id)
        {
            self.finish_without_receipt(lease_id, "no receipt arrived in time", out);
        } else {
            self.receipt_asked.insert(lease_id);
            out.push(RenterOutput::Send { provider: l.provider, lease_id, rpc: LeaseRpc::Status(lease_id) });
        }
    }

    /// The latest a lease granted on this request could end, with room to spare: a provider
    /// grants a request at most the replay window after it was issued (plus clock skew, which
    /// `receipt_grace_ms` covers), and the lease runs `duration_s` from its grant.
    fn latest_possible_end(&self, l: &RenterLease) -> Timestamp {
        l.requested_at
            .plus_secs(l.duration_s)
            .plus_millis(super::REQUEST_MAX_AGE_MS + self.config.receipt_grace_ms)
    }
}

fn reply_name(r: &LeaseRpcReply) -> &'static str {
    match r {
        LeaseRpcReply::Grant(_) => "grant",
        LeaseRpcReply::Reject(_) => "reject",
        LeaseRpcReply::Receipt(_) => "receipt",
        LeaseRpcReply::Active(_) => "active",
        LeaseRpcReply::Unknown => "unknown",
    }
}
