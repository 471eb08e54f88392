//! The renter side of the lease task: starting and releasing leases, routing the provider's
//! answers into the renter engine, and waking the API calls that wait for an outcome.

use super::{LeaseError, LeaseParams, LeaseTask, Timer};
use crate::handle::Command;
use crate::views::LeaseView;
use gpumesh_protocol::lease::LeaseState;
use gpumesh_protocol::lease::renter::{LeaseAsk, RenterError, RenterEvent, RenterInput, RenterOutput};
use gpumesh_protocol::wire::{self, LeaseRpcReply};
use gpumesh_protocol::{LeaseId, Nonce, Timestamp};
use tokio::sync::oneshot;

impl LeaseTask {
    pub(super) async fn start_lease(
        &mut self,
        p: LeaseParams,
        reply: oneshot::Sender<Result<LeaseView, LeaseError>>,
        now: Timestamp,
    ) {
        let offer = p.offer.body();
        if offer.provider == self.me {
            let _ = reply.send(Err(LeaseError::Invalid(
                "that offer is this node's own; lease from another node".into(),
            )));
            return;
        }
        let nonce = match crate::clock::random_bytes::<16>() {
            Ok(n) => Nonce(n),
            Err(e) => {
                let _ = reply.send(Err(LeaseError::Failed(e.to_string())));
                return;
            }
        };
        let ask = LeaseAsk {
            provider: offer.provider,
            offer_id: offer.offer_id,
            price: offer.price,
            max_price: p.max_price.unwrap_or(offer.price),
            gpus: p.gpus,
            duration_s: p.duration_s,
            ssh_key: p.ssh_key,
            nonce,
        };
        let lease_id = gpumesh_protocol::LeaseId::derive(&offer.provider, &self.me, &nonce.0);
        self.lease_waiters.insert(lease_id, reply);
        if let Err(e) = self.renter_handle(RenterInput::Lease(ask), now).await
            && let Some(w) = self.lease_waiters.remove(&lease_id)
        {
            let _ = w.send(Err(LeaseError::Invalid(e.to_string())));
        }
    }

    pub(super) async fn release(
        &mut self,
        lease_id: LeaseId,
        reply: oneshot::Sender<Result<LeaseView, LeaseError>>,
        now: Timestamp,
    ) {
        match self.renter_handle(RenterInput::Release { lease_id }, now).await {
            Ok(()) => {
                self.release_waiters.entry(lease_id).or_default().push(reply);
            }
            Err(e) => {
                let _ = reply.send(Err(LeaseError::Invalid(e.to_string())));
            }
        }
    }

    pub(super) async fn on_reply(
        &mut self,
        lease_id: LeaseId,
        result: Result<Vec<u8>, String>,
        now: Timestamp,
    ) {
        let input = match result.map(|b| wire::decode::<LeaseRpcReply>(&b, wire::MAX_LEASE_RPC)) {
            Ok(Ok(reply)) => RenterInput::Reply { lease_id, reply },
            Ok(Err(e)) => RenterInput::SendFailed { lease_id, error: format!("unreadable answer: {e}") },
            Err(error) => RenterInput::SendFailed { lease_id, error },
        };
        self.renter_input(input, now).await;
    }

    /// Feeds the renter engine for inputs that cannot be a local mistake.
    pub(super) async fn renter_input(&mut self, input: RenterInput, now: Timestamp) {
        if let Err(e) = self.renter_handle(input, now).await {
            tracing::debug!(error = %e, "renter input refused");
        }
    }

    async fn renter_handle(&mut self, input: RenterInput, now: Timestamp) -> Result<(), RenterError> {
        let outputs = self.renter.handle(input, now)?;
        for o in outputs {
            match o {
                RenterOutput::Persist(l) => {
                    let written = self.store.persist_renter_lease(&l).await;
                    if let Err(e) = &written {
                        tracing::error!(lease = %l.lease_id, error = %e, "could not persist a renter lease");
                    }
                    if l.state == LeaseState::Requested {
                        // On disk while the request travels; waited for before a grant is told.
                        let ticket = match written {
                            Ok(()) => self.store.flush_in_background(),
                            Err(e) => crate::store::FlushTicket::failed(e.to_string()),
                        };
                        self.request_flushes.insert(l.lease_id, ticket);
                    }
                }
                RenterOutput::Send { provider, lease_id, rpc } => {
                    let bytes = wire::encode(&rpc);
                    if self.swarm.send(Command::SendLease { provider, lease_id, bytes }).await.is_err() {
                        tracing::warn!(lease = %lease_id, "swarm gone; lease message not sent");
                    }
                }
                RenterOutput::ScheduleTimer { lease_id, at } => {
                    self.schedule(at, Timer::RenterCheck(lease_id))
                }
                RenterOutput::Event(e) => self.renter_event(e),
            }
        }
        Ok(())
    }

    fn renter_view(&self, lease_id: &LeaseId) -> Option<LeaseView> {
        self.renter.lease(lease_id).map(|l| LeaseView::renter(l, &self.me.to_string()))
    }

    fn renter_event(&mut self, e: RenterEvent) {
        match e {
            RenterEvent::Granted(id) => {
                tracing::info!(lease = %id, "lease granted to us");
                self.metrics.lease("renter", "granted");
                self.answer_grant(id);
            }
            RenterEvent::Rejected { lease_id, reason, detail } => {
                tracing::info!(lease = %lease_id, reason = %reason, detail = %detail, "lease rejected");
                self.metrics.lease("renter", reason.as_str());
                let message = if detail.is_empty() {
                    reason.explain().to_string()
                } else {
                    format!("{} ({detail})", reason.explain())
                };
                let id = lease_id.to_string();
                self.answer_lease(lease_id, move |_| {
                    Err(LeaseError::Rejected { reason, message, lease_id: id })
                });
            }
            RenterEvent::Failed { lease_id, why } => {
                tracing::warn!(lease = %lease_id, why = %why, "lease failed");
                self.metrics.lease("renter", "failed");
                self.answer_lease(lease_id, move |_| Err(LeaseError::Failed(why)));
            }
            RenterEvent::Ended { lease_id, state } => {
                tracing::info!(lease = %lease_id, state = state.as_str(), "lease ended");
                self.metrics.lease("renter", state.as_str());
                // A lease whose grant was lost and that had ended by the time the provider was
                // asked: its caller is still waiting. It was granted, but there is nothing to
                // use any more: say so (not a success a script would take as GPUs to use).
                let why = format!(
                    "lease {lease_id} was granted, but the grant was lost on the way and the lease had already \
                     ended ({}) when the provider was asked; its receipt is kept (`gpumesh receipts`)",
                    state.as_str()
                );
                self.answer_lease(lease_id, move |_| Err(LeaseError::Failed(why)));
                if let Some(v) = self.renter_view(&lease_id) {
                    self.answer_release(lease_id, |_| Ok(v.clone()));
                }
            }
            RenterEvent::ReleaseRefused { lease_id, reason, detail } => {
                let message = format!("{}: {detail}", reason.explain());
                self.answer_release(lease_id, |id| {
                    Err(LeaseError::Rejected { reason, message: message.clone(), lease_id: id.to_string() })
                });
            }
            RenterEvent::BadReply { lease_id, why } => {
                tracing::warn!(lease = %lease_id, why = %why, "provider reply not accepted");
                let still = self.renter.lease(&lease_id).is_some_and(|l| l.state == LeaseState::Active);
                let msg = if still { format!("{why}; the lease is still active") } else { why };
                self.answer_release(lease_id, |_| Err(LeaseError::Failed(msg.clone())));
            }
        }
    }

    fn answer_lease(&mut self, id: LeaseId, f: impl FnOnce(LeaseView) -> Result<LeaseView, LeaseError>) {
        self.request_flushes.remove(&id);
        if let (Some(w), Some(v)) = (self.lease_waiters.remove(&id), self.renter_view(&id)) {
            let _ = w.send(f(v));
        }
    }

    /// Tells the caller of a granted lease once its request is on disk: from then on a crash
    /// cannot lose the lease (a restart asks the provider for the grant again). The flush
    /// usually finished while the request travelled; then the caller is told at once.
    fn answer_grant(&mut self, id: LeaseId) {
        let flush = self.request_flushes.remove(&id);
        let (Some(w), Some(v)) = (self.lease_waiters.remove(&id), self.renter_view(&id)) else { return };
        let Some(mut flush) = flush else {
            let _ = w.send(Ok(v));
            return;
        };
        match flush.outcome() {
            Some(stored) => {
                let _ = w.send(granted(id, v, stored));
            }
            None => {
                tokio::spawn(async move {
                    let _ = w.send(granted(id, v, flush.wait().await));
                });
            }
        }
    }

    /// Answers every caller waiting on a release of `id`.
    fn answer_release(&mut self, id: LeaseId, f: impl Fn(&LeaseId) -> Result<LeaseView, LeaseError>) {
        for w in self.release_waiters.remove(&id).unwrap_or_default() {
            let _ = w.send(f(&id));
        }
    }
}

/// What the caller of a granted lease is told, once its request's flush is over.
fn granted(
    id: LeaseId,
    view: LeaseView,
    stored: Result<(), crate::store::StoreError>,
) -> Result<LeaseView, LeaseError> {
    stored.map(|()| view).map_err(|e| {
        LeaseError::Failed(format!(
            "lease {id} was granted, but this node could not store it on disk ({e}); it runs at the \
             provider, and this node forgets it if it restarts: release it with `gpumesh release {id}` \
             or fix the data dir's disk"
        ))
    })
}
