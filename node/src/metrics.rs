//! Prometheus metrics, served as text at `/metrics` on the API address.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a gossip message outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GossipLabels {
    /// `accepted`, `rejected` or `ignored`.
    pub result: &'static str,
    /// The reason code (`bad_signature`, `stale_sequence`…), or `ok`.
    pub reason: &'static str,
}

/// Labels of an API request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

/// Labels of a lease outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeaseLabels {
    /// `provider` or `renter`.
    pub role: &'static str,
    /// `granted`, a reject reason, `released`, `expired`, `failed`.
    pub outcome: String,
}

/// Every metric the node keeps.
pub struct Metrics {
    registry: Registry,
    pub peers: Gauge,
    pub offers_known: Gauge,
    pub gossip: Family<GossipLabels, Counter>,
    pub api_latency: Family<RouteLabels, Histogram>,
    pub leases: Family<LeaseLabels, Counter>,
    pub capacity_queries: Counter,
    pub sync_pages_served: Counter,
    pub sync_offers_served: Counter,
    pub sync_pages_refused: Counter,
    pub peer_bans: Counter,
    pub peers_trimmed: Counter,
    pub libp2p: libp2p::metrics::Metrics,
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("gpumesh");
        let peers = Gauge::default();
        registry.register("peers", "Connected peers", peers.clone());
        let offers_known = Gauge::default();
        registry.register("offers_known", "Offers in the offer book", offers_known.clone());
        let gossip = Family::<GossipLabels, Counter>::default();
        registry.register(
            "gossip_messages",
            "Gossip messages by validation result and reason",
            gossip.clone(),
        );
        let api_latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 16))
        });
        registry.register("api_request_seconds", "Local API request latency", api_latency.clone());
        let leases = Family::<LeaseLabels, Counter>::default();
        registry.register("leases", "Lease outcomes by role", leases.clone());
        let capacity_queries = Counter::default();
        registry.register(
            "capacity_queries_served",
            "Live capacity queries answered",
            capacity_queries.clone(),
        );
        let sync_pages_served = Counter::default();
        registry.register("sync_pages_served", "Book sync requests answered", sync_pages_served.clone());
        let sync_offers_served = Counter::default();
        registry.register(
            "sync_offers_served",
            "Offers sent in answers to book sync requests (ranges the asking peer held alike are left out)",
            sync_offers_served.clone(),
        );
        let sync_pages_refused = Counter::default();
        registry.register(
            "sync_pages_refused",
            "Book sync requests closed unanswered while busy (a page already on its way to that peer, or too many bytes of answers in flight)",
            sync_pages_refused.clone(),
        );
        let peer_bans = Counter::default();
        registry.register(
            "peer_bans",
            "Peers disconnected and blocked for invalid messages",
            peer_bans.clone(),
        );
        let peers_trimmed = Counter::default();
        registry.register(
            "peers_trimmed",
            "Idle connections closed because the node had more than target_peers",
            peers_trimmed.clone(),
        );
        let libp2p = libp2p::metrics::Metrics::new(&mut registry);
        Metrics {
            registry,
            peers,
            offers_known,
            gossip,
            api_latency,
            leases,
            capacity_queries,
            sync_pages_served,
            sync_offers_served,
            sync_pages_refused,
            peer_bans,
            peers_trimmed,
            libp2p,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String only fails if a metric's own encoder fails, which the
        // built-in types never do.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a gossip message outcome.
    pub fn gossip(&self, result: &'static str, reason: &'static str) {
        self.gossip.get_or_create(&GossipLabels { result, reason }).inc();
    }

    /// Counts a lease outcome.
    pub fn lease(&self, role: &'static str, outcome: impl Into<String>) {
        self.leases.get_or_create(&LeaseLabels { role, outcome: outcome.into() }).inc();
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
