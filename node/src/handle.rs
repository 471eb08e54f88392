//! [`NodeHandle`]: the cloneable way to talk to a running node. Each operation is one
//! [`Command`] carrying a `oneshot` reply; the event loop that owns the swarm answers it.

use crate::lease_task::{LeaseCommand, LeaseError};
use crate::views::*;
use gpumesh_protocol::query::Query;
use gpumesh_protocol::rank::SortKey;
use gpumesh_protocol::{NodeId, Offer, Verified};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The node has stopped (its event loop is gone).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the node has stopped")]
pub struct NodeStopped;

/// Why an offer id prefix did not name exactly one offer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LookupError {
    #[error("no offer matches `{0}`; run `gpumesh offers` to see offer ids")]
    NotFound(String),
    #[error("`{prefix}` matches {} offers ({}); give more characters", matches.len(), matches.join(", "))]
    Ambiguous { prefix: String, matches: Vec<String> },
}

/// A search of the offer book.
#[derive(Clone, Debug)]
pub struct Search {
    pub query: Query,
    pub sort: SortKey,
    pub limit: usize,
    pub latency_weight: f64,
}

/// Requests to the swarm event loop.
#[derive(Debug)]
pub enum Command {
    Status(oneshot::Sender<StatusView>),
    Peers(oneshot::Sender<Vec<PeerView>>),
    Offers(Search, oneshot::Sender<Vec<OfferView>>),
    /// Resolves an offer id or unique prefix to the offer.
    FindOffer(String, oneshot::Sender<Result<Verified<Offer>, LookupError>>),
    /// Live capacity query to every provider and connected peer.
    Capacity {
        search: Search,
        timeout: Duration,
        reply: oneshot::Sender<CapacityReport>,
    },
    /// Dial and ping providers that have no RTT yet.
    Probe {
        providers: Vec<NodeId>,
        timeout: Duration,
        reply: oneshot::Sender<usize>,
    },
    /// Publish a signed offer or withdrawal (also stored in our book), verified again first.
    Publish(Vec<u8>),
    /// Publish our own offer, signed here (no need to verify it again).
    PublishOffer(Box<gpumesh_protocol::Verified<gpumesh_protocol::Offer>>),
    /// Send a lease message to a provider; the answer goes to the lease task.
    SendLease {
        provider: NodeId,
        lease_id: gpumesh_protocol::LeaseId,
        bytes: Vec<u8>,
    },
    /// Answer an inbound lease message.
    RespondLease {
        token: u64,
        bytes: Vec<u8>,
    },
    /// Block (`true`) or unblock a peer: a blocked peer is disconnected and refused until
    /// unblocked. Answers whether anything changed.
    Block {
        peer: libp2p::PeerId,
        block: bool,
        reply: oneshot::Sender<bool>,
    },
    /// Stop: deliver pending gossip for a moment, flush, end the loop.
    Shutdown(oneshot::Sender<()>),
}

/// A change of the offer book, with the moment it happened.
#[derive(Clone, Debug)]
pub struct BookEvent {
    pub offer_id: gpumesh_protocol::OfferId,
    pub provider: NodeId,
    /// The offer's sequence (0 for a removal).
    pub seq: u64,
    /// `true` when the offer entered or changed, `false` when it left the book.
    pub present: bool,
    pub at: std::time::Instant,
}

/// A cloneable handle on a running node.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    pub(crate) swarm: mpsc::Sender<Command>,
    pub(crate) lease: mpsc::Sender<LeaseCommand>,
    pub(crate) book_events: tokio::sync::broadcast::Sender<BookEvent>,
}

impl NodeHandle {
    /// Every change of the offer book from now on (a slow receiver loses the oldest events:
    /// see `tokio::sync::broadcast`).
    pub fn book_events(&self) -> tokio::sync::broadcast::Receiver<BookEvent> {
        self.book_events.subscribe()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, NodeStopped> {
        let (tx, rx) = oneshot::channel();
        self.swarm.send(make(tx)).await.map_err(|_| NodeStopped)?;
        rx.await.map_err(|_| NodeStopped)
    }

    async fn ask_lease<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> LeaseCommand,
    ) -> Result<T, NodeStopped> {
        let (tx, rx) = oneshot::channel();
        self.lease.send(make(tx)).await.map_err(|_| NodeStopped)?;
        rx.await.map_err(|_| NodeStopped)
    }

    pub async fn status(&self) -> Result<StatusView, NodeStopped> {
        self.ask(Command::Status).await
    }

    pub async fn peers(&self) -> Result<Vec<PeerView>, NodeStopped> {
        self.ask(Command::Peers).await
    }

    pub async fn offers(&self, search: Search) -> Result<Vec<OfferView>, NodeStopped> {
        self.ask(|tx| Command::Offers(search, tx)).await
    }

    pub async fn find_offer(
        &self,
        prefix: String,
    ) -> Result<Result<Verified<Offer>, LookupError>, NodeStopped> {
        self.ask(|tx| Command::FindOffer(prefix, tx)).await
    }

    pub async fn capacity(&self, search: Search, timeout: Duration) -> Result<CapacityReport, NodeStopped> {
        self.ask(|reply| Command::Capacity { search, timeout, reply }).await
    }

    pub async fn probe(&self, providers: Vec<NodeId>, timeout: Duration) -> Result<usize, NodeStopped> {
        self.ask(|reply| Command::Probe { providers, timeout, reply }).await
    }

    /// Blocks a peer until [`NodeHandle::unblock`]: disconnects it and refuses its connections.
    pub async fn block(&self, peer: libp2p::PeerId) -> Result<bool, NodeStopped> {
        self.ask(|reply| Command::Block { peer, block: true, reply }).await
    }

    /// Lifts a block (manual or for misbehaviour).
    pub async fn unblock(&self, peer: libp2p::PeerId) -> Result<bool, NodeStopped> {
        self.ask(|reply| Command::Block { peer, block: false, reply }).await
    }

    /// Publishes a signed offer or withdrawal as if it were our own (it is validated like
    /// any gossip first). For tools and benchmarks that sign with this node's key.
    pub async fn publish(&self, envelope: Vec<u8>) -> Result<(), NodeStopped> {
        self.swarm.send(Command::Publish(envelope)).await.map_err(|_| NodeStopped)
    }

    /// Leases from an offer; waits for the provider's answer.
    pub async fn lease(
        &self,
        req: crate::lease_task::LeaseParams,
    ) -> Result<Result<LeaseView, LeaseError>, NodeStopped> {
        self.ask_lease(|reply| LeaseCommand::Lease(Box::new(req), reply)).await
    }

    /// Releases a lease (id or unique prefix); waits for the receipt.
    pub async fn release(&self, lease: String) -> Result<Result<LeaseView, LeaseError>, NodeStopped> {
        self.ask_lease(|reply| LeaseCommand::Release(lease, reply)).await
    }

    /// Every lease on this node, both roles.
    pub async fn leases(&self) -> Result<Vec<LeaseView>, NodeStopped> {
        self.ask_lease(LeaseCommand::List).await
    }

    /// One lease by id or unique prefix.
    pub async fn lease_show(&self, lease: String) -> Result<Result<LeaseView, LeaseError>, NodeStopped> {
        self.ask_lease(|reply| LeaseCommand::Show(lease, reply)).await
    }

    /// Every verified receipt this node holds (as renter or provider).
    pub async fn receipts(&self) -> Result<Vec<ReceiptView>, NodeStopped> {
        self.ask_lease(LeaseCommand::Receipts).await
    }

    /// Changes the price of all local GPU groups or of one model's; returns how many changed.
    pub async fn set_price(
        &self,
        model: Option<String>,
        price: gpumesh_protocol::Price,
    ) -> Result<Result<usize, LeaseError>, NodeStopped> {
        self.ask_lease(|reply| LeaseCommand::SetPrice { model, price, reply }).await
    }

    /// The local GPU inventory.
    pub async fn gpus(&self) -> Result<Vec<GpuView>, NodeStopped> {
        self.ask_lease(LeaseCommand::Gpus).await
    }
}
