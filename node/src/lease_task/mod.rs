//! The lease task: owns both lease state machines (provider and renter), the advertiser of
//! our own offers, the lease part of the store, timers and hooks. It runs beside the swarm
//! event loop so that flushing a lease to disk never stalls gossip.
//!
//! - [`provider`]: carrying out the provider engine's outputs, hooks, and advertising.
//! - [`renter`]: carrying out the renter engine's outputs and answering API waiters.

mod provider;
mod renter;
#[cfg(test)]
mod tests;

pub(crate) use provider::{Advertiser, OfferedGroup};

use crate::config::Settings;
use crate::handle::Command;
use crate::inventory::DetectedGpu;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::views::{LeaseView, ReceiptView};
use gpumesh_protocol::lease::messages::{RejectReason, UsageReceipt};
use gpumesh_protocol::lease::provider::{ProviderConfig, ProviderEngine, ProviderInput};
use gpumesh_protocol::lease::renter::{RenterConfig, RenterEngine, RenterInput};
use gpumesh_protocol::{LeaseId, NodeId, Offer, Price, SigningKey, Timestamp, Verified};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// What a renter asks for.
#[derive(Clone, Debug)]
pub struct LeaseParams {
    pub offer: Verified<Offer>,
    pub gpus: u32,
    pub duration_s: u64,
    /// Highest acceptable price per GPU-hour; the offer's price when not given.
    pub max_price: Option<Price>,
    pub ssh_key: Option<String>,
}

/// Why a lease operation did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    #[error("rejected ({reason}): {message}")]
    Rejected { reason: RejectReason, message: String, lease_id: String },
    #[error("lease failed: {0}")]
    Failed(String),
    #[error("no lease matches `{0}`; run `gpumesh leases` to see lease ids")]
    NotFound(String),
    #[error("`{prefix}` matches several leases ({}); give more characters", matches.join(", "))]
    Ambiguous { prefix: String, matches: Vec<String> },
    #[error("{0}")]
    Invalid(String),
}

/// Requests to the lease task, from the API and from the swarm loop.
#[derive(Debug)]
pub enum LeaseCommand {
    Lease(Box<LeaseParams>, oneshot::Sender<Result<LeaseView, LeaseError>>),
    Release(String, oneshot::Sender<Result<LeaseView, LeaseError>>),
    List(oneshot::Sender<Vec<LeaseView>>),
    Show(String, oneshot::Sender<Result<LeaseView, LeaseError>>),
    Receipts(oneshot::Sender<Vec<ReceiptView>>),
    Gpus(oneshot::Sender<Vec<DetectedGpu>>),
    /// Change the price of every group (`model: None`) or of one model; re-advertises.
    /// Answers the number of groups changed.
    SetPrice {
        model: Option<String>,
        price: Price,
        reply: oneshot::Sender<Result<usize, LeaseError>>,
    },
    /// An inbound lease message from the swarm (answer with `Command::RespondLease`).
    Inbound {
        token: u64,
        from: NodeId,
        bytes: Vec<u8>,
    },
    /// The provider's answer to a message we sent about `lease_id`, or why none came.
    Reply {
        lease_id: LeaseId,
        result: Result<Vec<u8>, String>,
    },
    /// Withdraw our offers and flush; answer when done.
    Shutdown(oneshot::Sender<()>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    ProviderEnd(LeaseId),
    RenterCheck(LeaseId),
    Refresh,
    Publish,
}

/// How long a changed offer waits before it is re-advertised, ms (changes in between are
/// coalesced into one new offer).
const REPUBLISH_DELAY_MS: u64 = 50;

/// Internal events from spawned work (hooks).
#[derive(Debug)]
enum Internal {
    HookDone { lease_id: LeaseId, result: Result<String, String> },
}

/// The lease task.
pub(crate) struct LeaseTask {
    me: NodeId,
    settings: Arc<Settings>,
    store: Store,
    metrics: Arc<Metrics>,
    provider: ProviderEngine,
    renter: RenterEngine,
    advertiser: Advertiser,
    gpus: Vec<DetectedGpu>,
    swarm: mpsc::Sender<Command>,
    commands: mpsc::Receiver<LeaseCommand>,
    internal_tx: mpsc::Sender<Internal>,
    internal_rx: mpsc::Receiver<Internal>,
    timers: BinaryHeap<Reverse<(Timestamp, Timer)>>,
    lease_waiters: HashMap<LeaseId, oneshot::Sender<Result<LeaseView, LeaseError>>>,
    /// Flushes of requests still travelling: a grant is reported only once its request is on
    /// disk (see `RenterOutput::Persist`).
    request_flushes: HashMap<LeaseId, crate::store::FlushTicket>,
    /// Every caller waiting on a release of a lease (two may release the same lease at once).
    release_waiters: HashMap<LeaseId, Vec<oneshot::Sender<Result<LeaseView, LeaseError>>>>,
    publish_scheduled: bool,
}

/// What the lease task needs to start.
pub(crate) struct LeaseTaskParts {
    pub key: SigningKey,
    pub settings: Arc<Settings>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub groups: Vec<OfferedGroup>,
    pub host: gpumesh_protocol::HostSpec,
    pub gpus: Vec<DetectedGpu>,
    pub swarm: mpsc::Sender<Command>,
    pub commands: mpsc::Receiver<LeaseCommand>,
}

impl LeaseTask {
    pub(crate) fn new(p: LeaseTaskParts) -> LeaseTask {
        let me = NodeId::from_bytes(p.key.verifying_key().to_bytes());
        let s = &p.settings;
        let provider = ProviderEngine::new(
            p.key.clone(),
            ProviderConfig {
                network: s.network.clone(),
                max_clock_skew_ms: s.max_clock_skew.as_millis() as u64,
                request_max_age_ms: gpumesh_protocol::lease::REQUEST_MAX_AGE_MS,
                policy: s.policy.clone(),
                start_hook: s.on_lease_start.is_some(),
            },
        );
        let renter = RenterEngine::new(
            p.key.clone(),
            RenterConfig {
                network: s.network.clone(),
                receipt_grace_ms: s.receipt_grace.as_millis() as u64,
                status_retry_ms: 2_000,
            },
        );
        let advertiser = Advertiser::new(p.key, s, p.groups, p.host);
        let (internal_tx, internal_rx) = mpsc::channel(256);
        LeaseTask {
            me,
            settings: p.settings,
            store: p.store,
            metrics: p.metrics,
            provider,
            renter,
            advertiser,
            gpus: p.gpus,
            swarm: p.swarm,
            commands: p.commands,
            internal_tx,
            internal_rx,
            timers: BinaryHeap::new(),
            lease_waiters: HashMap::new(),
            request_flushes: HashMap::new(),
            release_waiters: HashMap::new(),
            publish_scheduled: false,
        }
    }

    fn schedule(&mut self, at: Timestamp, t: Timer) {
        self.timers.push(Reverse((at, t)));
    }

    /// Restores leases from the store, publishes our offers, then serves commands until
    /// `Shutdown` (or until every sender is gone).
    pub(crate) async fn run(mut self) {
        let now = crate::clock::now();
        let (pleases, bad_p) = self.store.provider_leases();
        let (rleases, bad_r) = self.store.renter_leases();
        if bad_p + bad_r > 0 {
            tracing::error!(unreadable = bad_p + bad_r, "some stored leases could not be read");
        }
        tracing::info!(provider = pleases.len(), renter = rleases.len(), "leases restored");
        let groups = self.advertiser.engine_groups();
        self.provider_input(ProviderInput::SetGroups(groups), None).await;
        self.provider_input(ProviderInput::Restore(pleases), None).await;
        self.renter_input(RenterInput::Restore(rleases), now).await;
        self.advertiser.wait_for_addrs(&self.swarm).await;
        self.advertiser.mark_all_dirty();
        self.publish_dirty().await;
        self.schedule(self.advertiser.next_refresh(), Timer::Refresh);
        loop {
            let next = self.timers.peek().map(|Reverse((at, _))| *at);
            let sleep = async {
                match next {
                    Some(at) => {
                        let wait = at.millis_since(crate::clock::now());
                        tokio::time::sleep(std::time::Duration::from_millis(wait)).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    Some(LeaseCommand::Shutdown(done)) => {
                        self.shutdown().await;
                        let _ = done.send(());
                        return;
                    }
                    Some(c) => self.handle_command(c).await,
                    None => {
                        self.shutdown().await;
                        return;
                    }
                },
                Some(ev) = self.internal_rx.recv() => match ev {
                    Internal::HookDone { lease_id, result } => {
                        self.provider_input(ProviderInput::HookDone { lease_id, result }, None).await;
                    }
                },
                _ = sleep => self.fire_timers().await,
            }
            // Coalesce re-advertisements: a burst of grants and releases becomes one new
            // offer per group, published a moment later and off the lease's own path.
            if !self.advertiser.dirty.is_empty() && !self.publish_scheduled {
                self.publish_scheduled = true;
                self.schedule(crate::clock::now().plus_millis(REPUBLISH_DELAY_MS), Timer::Publish);
            }
        }
    }

    async fn fire_timers(&mut self) {
        let now = crate::clock::now();
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, t))) = self.timers.pop() else { break };
            match t {
                Timer::ProviderEnd(lease_id) => {
                    self.provider_input(ProviderInput::Timer { lease_id }, None).await
                }
                Timer::RenterCheck(lease_id) => self.renter_input(RenterInput::Timer { lease_id }, now).await,
                Timer::Refresh => {
                    self.advertiser.mark_all_dirty();
                    self.schedule(self.advertiser.next_refresh(), Timer::Refresh);
                }
                Timer::Publish => {
                    self.publish_scheduled = false;
                    self.publish_dirty().await;
                }
            }
        }
    }

    async fn handle_command(&mut self, c: LeaseCommand) {
        let now = crate::clock::now();
        match c {
            LeaseCommand::Inbound { token, from, bytes } => self.on_inbound(token, from, &bytes).await,
            LeaseCommand::Reply { lease_id, result } => self.on_reply(lease_id, result, now).await,
            LeaseCommand::Lease(params, reply) => self.start_lease(*params, reply, now).await,
            LeaseCommand::Release(prefix, reply) => match self.resolve(&prefix) {
                Ok(id) if self.renter.lease(&id).is_some() => self.release(id, reply, now).await,
                Ok(id) => {
                    let _ = reply.send(Err(LeaseError::Invalid(format!(
                        "lease {id} was granted by this node; only its renter can release it"
                    ))));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            LeaseCommand::List(reply) => {
                let _ = reply.send(self.list());
            }
            LeaseCommand::Show(prefix, reply) => {
                let _ = reply.send(
                    self.resolve(&prefix)
                        .map(|id| self.view(&id))
                        .and_then(|v| v.ok_or_else(|| LeaseError::NotFound(prefix.clone()))),
                );
            }
            LeaseCommand::Receipts(reply) => {
                let _ = reply.send(self.receipts());
            }
            LeaseCommand::Gpus(reply) => {
                let _ = reply.send(self.gpus.clone());
            }
            LeaseCommand::SetPrice { model, price, reply } => {
                let changed = self.advertiser.set_price(model.as_deref(), price);
                if changed > 0 {
                    let groups = self.advertiser.engine_groups();
                    self.provider_input(ProviderInput::SetGroups(groups), None).await;
                }
                let _ = reply.send(if changed == 0 {
                    Err(LeaseError::NotFound(match model {
                        Some(m) => format!("no local GPU group of model {m}"),
                        None => "no local GPUs to price".into(),
                    }))
                } else {
                    Ok(changed)
                });
            }
            LeaseCommand::Shutdown(_) => unreachable!("handled in run"),
        }
    }

    /// Resolves a lease id or unique prefix, across both roles.
    fn resolve(&self, prefix: &str) -> Result<LeaseId, LeaseError> {
        let p = prefix.trim().to_ascii_lowercase();
        // A whole id is looked up, not matched against every lease this node ever had.
        if let Ok(id) = p.parse::<LeaseId>() {
            let known = self.renter.lease(&id).is_some() || self.provider.lease(&id).is_some();
            return if known { Ok(id) } else { Err(LeaseError::NotFound(prefix.into())) };
        }
        let mut ids: Vec<LeaseId> = self
            .renter
            .leases()
            .map(|l| l.lease_id)
            .chain(self.provider.leases().map(|l| l.lease_id))
            .filter(|id| !p.is_empty() && id.to_string().starts_with(&p))
            .collect();
        ids.sort();
        ids.dedup();
        match ids.len() {
            0 => Err(LeaseError::NotFound(prefix.into())),
            1 => Ok(ids[0]),
            _ => Err(LeaseError::Ambiguous {
                prefix: prefix.into(),
                matches: ids.iter().map(|i| i.to_string()).collect(),
            }),
        }
    }

    fn view(&self, id: &LeaseId) -> Option<LeaseView> {
        let me = self.me.to_string();
        self.renter
            .lease(id)
            .map(|l| LeaseView::renter(l, &me))
            .or_else(|| self.provider.lease(id).map(|l| LeaseView::provider(l, &me)))
    }

    fn list(&self) -> Vec<LeaseView> {
        let me = self.me.to_string();
        let mut v: Vec<(Timestamp, LeaseView)> = self
            .renter
            .leases()
            .map(|l| (l.requested_at, LeaseView::renter(l, &me)))
            .chain(self.provider.leases().map(|l| (l.start, LeaseView::provider(l, &me))))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.lease_id.cmp(&b.1.lease_id)));
        v.into_iter().map(|(_, l)| l).collect()
    }

    fn receipts(&self) -> Vec<ReceiptView> {
        let peek =
            |b: &gpumesh_protocol::Bytes| gpumesh_protocol::lease::provider::peek_body::<UsageReceipt>(&b.0);
        let mut v: Vec<ReceiptView> = self
            .renter
            .leases()
            .filter_map(|l| l.receipt.as_ref().and_then(peek))
            .chain(self.provider.leases().filter_map(|l| l.receipt.as_ref().and_then(peek)))
            .map(|r| ReceiptView::new(&r))
            .collect();
        v.sort_by(|a, b| a.end.cmp(&b.end).then_with(|| a.lease_id.cmp(&b.lease_id)));
        v
    }

    async fn shutdown(&mut self) {
        self.advertiser.withdraw_all(&self.store, &self.swarm).await;
        if let Err(e) = self.store.flush().await {
            tracing::error!(error = %e, "flushing leases at shutdown failed");
        }
    }
}
