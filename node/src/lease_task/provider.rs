//! The provider side of the lease task: feeding the provider engine, carrying out its outputs
//! in order (durable before acknowledged), running hooks, and advertising our offers.

use super::{Internal, LeaseTask, Timer};
use crate::config::Settings;
use crate::handle::Command;
use crate::store::StoreError;
use gpumesh_protocol::lease::GpuUnit;
use gpumesh_protocol::lease::provider::{GpuGroup, ProviderEvent, ProviderInput, ProviderOutput};
use gpumesh_protocol::wire::{self, LeaseRpc};
use gpumesh_protocol::{
    GpuSpec, HostSpec, LeaseId, NodeId, Offer, OfferId, PROTOCOL_VERSION, Price, SigningKey, Timestamp,
    Verified, Withdrawal,
};
use std::collections::{BTreeSet, HashSet, VecDeque};
use std::time::Duration;
use tokio::sync::mpsc;

/// After the write of lease `failed` failed: removes from `queue` what must not happen
/// about that lease (its timer, its start hook, a `Granted` event), every reply and every
/// `Rejected` event, and returns the replies' tokens (the engine answers each again, and
/// counts its rejects then). Replies name no lease, but an input that makes replies concerns
/// one lease only; an input about many leases (a restore) makes none, and the other leases'
/// outputs stay.
pub(super) fn drop_after_failed_write(queue: &mut VecDeque<ProviderOutput>, failed: LeaseId) -> Vec<u64> {
    let mut tokens = Vec::new();
    queue.retain(|o| match o {
        ProviderOutput::Reply { token, .. } => {
            tokens.push(*token);
            false
        }
        ProviderOutput::ScheduleEnd { lease_id, .. } => *lease_id != failed,
        ProviderOutput::RunStartHook(l) => l.lease_id != failed,
        ProviderOutput::Event(ProviderEvent::Granted { lease_id, .. }) => *lease_id != failed,
        ProviderOutput::Event(ProviderEvent::Rejected { .. }) => false,
        _ => true,
    });
    tokens
}

impl LeaseTask {
    /// An inbound message on `/gpumesh/lease/1`.
    pub(super) async fn on_inbound(&mut self, token: u64, from: NodeId, bytes: &[u8]) {
        let input = match wire::decode::<LeaseRpc>(bytes, wire::MAX_LEASE_RPC) {
            Ok(LeaseRpc::Request(b)) => {
                return self.provider_input_owned(token, from, b.0, true).await;
            }
            Ok(LeaseRpc::Release(b)) => {
                return self.provider_input_owned(token, from, b.0, false).await;
            }
            Ok(LeaseRpc::Status(lease_id)) => ProviderInput::Status { token, from, lease_id },
            // Not even a lease message: the engine answers it as an invalid request.
            Err(_) => ProviderInput::Request { token, from, bytes },
        };
        self.provider_input(input, Some(token)).await;
    }

    async fn provider_input_owned(&mut self, token: u64, from: NodeId, bytes: Vec<u8>, request: bool) {
        let input = if request {
            ProviderInput::Request { token, from, bytes: &bytes }
        } else {
            ProviderInput::Release { token, from, bytes: &bytes }
        };
        self.provider_input(input, Some(token)).await;
    }

    /// Feeds the provider engine and carries out its outputs in order. A `Persist` that
    /// fails stops every later output about that lease (no grant leaves) and tells the engine.
    pub(super) async fn provider_input(&mut self, input: ProviderInput<'_>, token: Option<u64>) {
        let now = crate::clock::now();
        let mut queue: VecDeque<ProviderOutput> = self.provider.handle(input, now).into();
        let mut failed: HashSet<LeaseId> = HashSet::new();
        while let Some(o) = queue.pop_front() {
            if let ProviderOutput::Persist(l) = &o {
                if failed.contains(&l.lease_id) {
                    // The engine's own failure record: try once more, ignore the result.
                    let _ = self.store.persist_provider_lease(l).await;
                    continue;
                }
                if let Err(e) = self.persist_lease(l).await {
                    tracing::error!(lease = %l.lease_id, error = %e, "could not persist a lease; failing it");
                    failed.insert(l.lease_id);
                    // Drop what was to follow this write (the grant above all), and give the
                    // engine the streams of the dropped replies, so that each still gets an
                    // answer (a reject) instead of waiting for its timeout.
                    let mut tokens: Vec<u64> = token.into_iter().collect();
                    tokens.extend(drop_after_failed_write(&mut queue, l.lease_id));
                    let more = self.provider.handle(
                        ProviderInput::PersistFailed {
                            lease_id: l.lease_id,
                            tokens,
                            error: "provider storage failed".into(),
                        },
                        now,
                    );
                    queue.extend(more);
                    continue;
                }
                continue;
            }
            self.carry_out(o);
        }
    }

    /// Writes a lease. A live lease may find one of its GPUs still reserved on disk by a
    /// lease this engine has already ended, when the write that ended it failed (the engine
    /// frees the GPUs regardless): that end is written now and the write tried once more, so
    /// a failed write does not keep the GPU from being leased until a restart. (`&mut self`
    /// only so that the task's future stays `Send`.)
    async fn persist_lease(&mut self, l: &gpumesh_protocol::lease::ProviderLease) -> Result<(), StoreError> {
        let result = self.store.persist_provider_lease(l).await;
        let Err(StoreError::AlreadyReserved { holder, .. }) = &result else { return result };
        let ended = holder
            .parse::<LeaseId>()
            .ok()
            .and_then(|id| self.provider.lease(&id))
            .filter(|h| !h.state.is_live());
        let Some(ended) = ended.cloned() else { return result };
        tracing::warn!(lease = %ended.lease_id, "writing the end of a lease whose earlier write failed");
        self.store.persist_provider_lease(&ended).await?;
        self.store.persist_provider_lease(l).await
    }

    fn carry_out(&mut self, o: ProviderOutput) {
        match o {
            ProviderOutput::Persist(_) => unreachable!("persisted by the caller"),
            ProviderOutput::Reply { token, reply } => {
                let bytes = wire::encode(&reply);
                match self.swarm.try_send(Command::RespondLease { token, bytes }) {
                    Ok(()) => {}
                    // The event loop is busy: hand the reply over when it has room, without
                    // holding up this task (the event loop may itself be waiting on it).
                    // Every stream gets its answer; replies to different streams need no order.
                    Err(mpsc::error::TrySendError::Full(cmd)) => {
                        let swarm = self.swarm.clone();
                        tokio::spawn(async move {
                            let _ = swarm.send(cmd).await;
                        });
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        tracing::debug!(token, "the swarm is gone; a lease reply is dropped");
                    }
                }
            }
            ProviderOutput::RunStartHook(lease) => {
                let Some(program) = self.settings.on_lease_start.clone() else {
                    let _ = self
                        .internal_tx
                        .try_send(Internal::HookDone { lease_id: lease.lease_id, result: Ok("{}".into()) });
                    return;
                };
                let limit = self.settings.hook_timeout;
                let tx = self.internal_tx.clone();
                tokio::spawn(async move {
                    let result = crate::hooks::run_start(&program, &lease, limit).await;
                    if let Err(e) = &result {
                        tracing::warn!(lease = %lease.lease_id, error = %e, "start hook failed");
                    }
                    let _ = tx.send(Internal::HookDone { lease_id: lease.lease_id, result }).await;
                });
            }
            ProviderOutput::RunEndHook(lease) => {
                if let Some(program) = self.settings.on_lease_end.clone() {
                    let limit = self.settings.hook_timeout;
                    tokio::spawn(async move {
                        let input = crate::hooks::HookInput::new("end", &lease);
                        if let Err(e) = crate::hooks::run(&program, &input, limit).await {
                            tracing::warn!(lease = %lease.lease_id, error = %e, "end hook failed");
                        }
                    });
                }
            }
            ProviderOutput::ScheduleEnd { lease_id, at } => self.schedule(at, Timer::ProviderEnd(lease_id)),
            ProviderOutput::FreeCountChanged(id) => {
                self.advertiser.dirty.insert(id);
            }
            ProviderOutput::Event(e) => self.provider_event(e),
        }
    }

    fn provider_event(&mut self, e: ProviderEvent) {
        match e {
            ProviderEvent::Granted { lease_id, renter } => {
                tracing::info!(lease = %lease_id, renter = %renter, "lease granted");
                self.metrics.lease("provider", "granted");
            }
            ProviderEvent::Rejected { renter, reason, detail } => {
                tracing::info!(renter = ?renter.map(|r| r.to_string()), reason = %reason, detail = %detail, "lease rejected");
                self.metrics.lease("provider", reason.as_str());
            }
            ProviderEvent::Ended { lease_id, state } => {
                tracing::info!(lease = %lease_id, state = state.as_str(), "lease ended");
                self.metrics.lease("provider", state.as_str());
            }
            ProviderEvent::ConflictOnRestore { lease_id, gpu } => {
                tracing::error!(lease = %lease_id, gpu = %gpu, "stored leases claim the same GPU; failing the later one");
            }
        }
    }

    /// Re-signs and publishes every offer whose free count changed (or is due).
    pub(super) async fn publish_dirty(&mut self) {
        let dirty: Vec<OfferId> = std::mem::take(&mut self.advertiser.dirty).into_iter().collect();
        for id in dirty {
            let free = self.provider.free_gpus(&id);
            self.advertiser.publish(id, free, &self.store, &self.swarm).await;
        }
    }
}

/// One group of identical local GPUs and its price.
#[derive(Clone, Debug)]
pub(crate) struct OfferedGroup {
    pub spec: GpuSpec,
    pub units: Vec<GpuUnit>,
    pub price: Price,
}

/// Builds, signs and publishes this node's offers.
#[derive(Debug)]
pub(crate) struct Advertiser {
    key: SigningKey,
    me: NodeId,
    network: String,
    ttl: Duration,
    min_s: u64,
    max_s: u64,
    host: HostSpec,
    groups: Vec<(OfferId, OfferedGroup)>,
    addrs: Vec<String>,
    pub(super) dirty: BTreeSet<OfferId>,
    published: BTreeSet<OfferId>,
}

impl Advertiser {
    pub(crate) fn new(
        key: SigningKey,
        s: &Settings,
        groups: Vec<OfferedGroup>,
        host: HostSpec,
    ) -> Advertiser {
        let me = NodeId::from_bytes(key.verifying_key().to_bytes());
        Advertiser {
            key,
            me,
            network: s.network.clone(),
            ttl: s.offer_ttl,
            min_s: s.min_lease.as_secs().max(1),
            max_s: s.max_lease.as_secs().max(1),
            host,
            groups: groups.into_iter().map(|g| (OfferId::derive(&me, &g.spec.group_key()), g)).collect(),
            addrs: Vec::new(),
            dirty: BTreeSet::new(),
            published: BTreeSet::new(),
        }
    }

    /// The groups as the provider engine sees them.
    pub(crate) fn engine_groups(&self) -> Vec<GpuGroup> {
        self.groups
            .iter()
            .map(|(id, g)| GpuGroup {
                offer_id: *id,
                gpus: g.units.clone(),
                price: g.price,
                min_duration_s: self.min_s,
                max_duration_s: self.max_s,
            })
            .collect()
    }

    /// Sets the price of every group, or of the groups of one model (matched loosely, as the
    /// catalogue does). Returns how many groups changed.
    pub(crate) fn set_price(&mut self, model: Option<&str>, price: Price) -> usize {
        let want = model.map(crate::inventory::catalogue::normalize);
        let mut n = 0;
        for (id, g) in &mut self.groups {
            if want.as_ref().is_none_or(|m| &crate::inventory::catalogue::normalize(&g.spec.model) == m) {
                if g.price != price {
                    g.price = price;
                    self.dirty.insert(*id);
                }
                n += 1;
            }
        }
        n
    }

    pub(crate) fn mark_all_dirty(&mut self) {
        self.dirty.extend(self.groups.iter().map(|(id, _)| *id));
    }

    /// When offers are next re-announced: at a third of their TTL.
    pub(crate) fn next_refresh(&self) -> Timestamp {
        crate::clock::now().plus_millis((self.ttl.as_millis() as u64 / 3).max(100))
    }

    /// Waits (briefly) until the swarm has bound its listen addresses, and records them for
    /// offers: routable ones first, without the `/p2p` suffix, at most the protocol's limit.
    pub(crate) async fn wait_for_addrs(&mut self, swarm: &mpsc::Sender<Command>) {
        if self.groups.is_empty() {
            return;
        }
        for _ in 0..100 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if swarm.send(Command::Status(tx)).await.is_err() {
                return;
            }
            let Ok(status) = rx.await else { return };
            if !status.listen_addrs.is_empty() {
                let mut addrs: Vec<String> = status
                    .listen_addrs
                    .iter()
                    .map(|a| a.rsplit_once("/p2p/").map_or(a.as_str(), |(base, _)| base).to_string())
                    .collect();
                addrs.sort_by_key(|a| {
                    (a.contains("/127.0.0.1/") || a.contains("/::1/"), a.contains("/quic"), a.clone())
                });
                addrs.dedup();
                addrs.truncate(gpumesh_protocol::offer::limits::ADDRS);
                self.addrs = addrs;
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!("no listen address bound yet; offers will carry no addresses");
    }

    fn next_seq(&self, store: &crate::store::Store) -> Option<u64> {
        match store.next_seq(crate::clock::now().0) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot reserve an offer sequence number; not publishing");
                None
            }
        }
    }

    /// Signs and publishes the current offer for one group.
    pub(crate) async fn publish(
        &mut self,
        id: OfferId,
        free: u32,
        store: &crate::store::Store,
        swarm: &mpsc::Sender<Command>,
    ) {
        let Some((_, g)) = self.groups.iter().find(|(gid, _)| *gid == id) else { return };
        let Some(seq) = self.next_seq(store) else { return };
        let now = crate::clock::now();
        let offer = Offer {
            v: PROTOCOL_VERSION,
            network: self.network.clone(),
            offer_id: id,
            provider: self.me,
            seq,
            issued_at: now,
            expires_at: now.plus_millis(self.ttl.as_millis() as u64),
            gpu: g.spec.clone(),
            gpu_total: g.units.len() as u32,
            gpu_free: free,
            host: self.host.clone(),
            price: g.price,
            min_duration_s: self.min_s,
            max_duration_s: self.max_s,
            addrs: self.addrs.clone(),
        };
        if let Err(e) = offer.validate_fields() {
            tracing::error!(offer = %id, error = %e, "our own offer is invalid; not publishing it");
            return;
        }
        tracing::debug!(offer = %id, seq, free, "publishing offer");
        let env = Verified::seal(&self.key, offer);
        if swarm.send(Command::PublishOffer(Box::new(env))).await.is_ok() {
            self.published.insert(id);
        }
    }

    /// Signs and publishes a withdrawal of every offer we published.
    pub(crate) async fn withdraw_all(&mut self, store: &crate::store::Store, swarm: &mpsc::Sender<Command>) {
        for id in std::mem::take(&mut self.published) {
            let Some(seq) = self.next_seq(store) else { return };
            let w = Withdrawal {
                v: PROTOCOL_VERSION,
                network: self.network.clone(),
                offer_id: id,
                provider: self.me,
                seq,
                issued_at: crate::clock::now(),
            };
            let env = Verified::seal(&self.key, w);
            tracing::info!(offer = %id, "withdrawing offer");
            let _ = swarm.send(Command::Publish(env.bytes().to_vec())).await;
        }
    }
}
