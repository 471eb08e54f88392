//! Node configuration: the `gpumesh.toml` file ([`NodeConfig`], every field optional) and its
//! checked form ([`Settings`]). Command-line flags are applied to a [`NodeConfig`] before it
//! is checked, so flags win over the file.

use gpumesh_protocol::lease::provider::Policy;
use gpumesh_protocol::{NodeId, Price};
use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default TCP and UDP port for peer-to-peer traffic.
pub const DEFAULT_P2P_PORT: u16 = 4747;
/// Default address of the local API.
pub const DEFAULT_API: &str = "127.0.0.1:4748";
/// Default network name.
pub const DEFAULT_NETWORK: &str = "mainnet";

/// A configuration problem, with the field and how to fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path} is not valid TOML for gpumesh: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("`{field}`: {message}")]
    Invalid { field: &'static str, message: String },
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, message: message.into() }
}

/// The raw configuration, as in `gpumesh.toml`. Every field has a default.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Network name: nodes only talk to nodes of the same network.
    pub network: String,
    /// Listen multiaddrs.
    pub listen: Vec<String>,
    /// Bootstrap peers: full multiaddrs ending in `/p2p/<peer id>`.
    pub bootstrap: Vec<String>,
    /// Local API address (`HOST:PORT`, port 0 for any).
    pub api: String,
    /// Whether the API may listen on a non-loopback address.
    pub api_allow_remote: bool,
    /// Discover peers on the LAN with mDNS.
    pub mdns: bool,
    /// Simulated GPUs instead of detection, e.g. `H100-SXM-80GB:2,RTX-4090:1`.
    pub simulate_gpus: Option<String>,
    /// Where the nodes of this host lock the real GPUs they offer, so that two nodes never
    /// offer the same GPU. Every node on the host must use the same directory.
    pub gpu_lock_dir: Option<PathBuf>,
    /// Price in USD per GPU-hour for every GPU (overrides `prices` and the catalogue).
    pub price: Option<String>,
    /// Price in USD per GPU-hour per model name.
    pub prices: BTreeMap<String, String>,
    /// Region code of this machine.
    pub region: String,
    /// How long an offer is valid (humantime, e.g. `10m`).
    pub offer_ttl: String,
    /// Shortest and longest lease this provider accepts.
    pub min_lease: String,
    pub max_lease: String,
    /// Most offers kept per provider in the offer book.
    pub max_offers_per_provider: usize,
    /// Most connections in total.
    pub max_connections: u32,
    /// Connected peers a node keeps without a reason. Above this, every sweep closes the
    /// connections that carry nothing for it: peers outside its gossip mesh, connected longer
    /// than a grace period, with no capacity, lease or probe traffic within the idle timeout
    /// and no sync, capacity query or probe of its own waiting (peers in use are kept only up
    /// to half of `max_connections`, most recently used first); at or above it, the node stops
    /// looking for peers unless its gossip mesh is thin. Fewer connections cost less CPU and
    /// memory on every node (docs/protocol.md §2).
    pub target_peers: u32,
    /// `text` or `json`.
    pub log_format: String,
    pub hooks: HooksConfig,
    pub policy: PolicyConfig,
    pub tuning: TuningConfig,
}

/// Programs run at the start and end of a lease.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct HooksConfig {
    pub on_lease_start: Option<PathBuf>,
    pub on_lease_end: Option<PathBuf>,
    /// Time limit for a hook (humantime), default `30s`, at most `90s` (a renter waits 120 s
    /// for a lease's answer).
    pub timeout: Option<String>,
}

/// Who may lease from this provider.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// If not empty, only these renter ids may lease.
    pub allow: Vec<String>,
    /// These renter ids may never lease.
    pub deny: Vec<String>,
    /// Most concurrent leases per renter (0 = no limit).
    pub max_leases_per_renter: usize,
}

/// Timers, mostly for tests and benchmarks. Humantime strings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TuningConfig {
    pub gossip_heartbeat: String,
    pub sweep_interval: String,
    pub ping_interval: String,
    pub bootstrap_retry_max: String,
    pub request_timeout: String,
    pub receipt_grace: String,
    pub idle_connection_timeout: String,
    pub max_clock_skew: String,
    /// Longest offer TTL accepted from others.
    pub max_offer_ttl: String,
    /// Most offers this node sends in one book sync page (1 to 4096).
    pub sync_page_offers: usize,
}

impl Default for TuningConfig {
    fn default() -> Self {
        TuningConfig {
            gossip_heartbeat: "1s".into(),
            sweep_interval: "5s".into(),
            ping_interval: "15s".into(),
            bootstrap_retry_max: "60s".into(),
            request_timeout: "10s".into(),
            receipt_grace: "10m".into(),
            idle_connection_timeout: "5m".into(),
            max_clock_skew: "30s".into(),
            max_offer_ttl: "1h".into(),
            sync_page_offers: gpumesh_protocol::wire::MAX_SYNC_OFFERS,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            network: DEFAULT_NETWORK.into(),
            listen: vec![
                format!("/ip4/0.0.0.0/tcp/{DEFAULT_P2P_PORT}"),
                format!("/ip4/0.0.0.0/udp/{DEFAULT_P2P_PORT}/quic-v1"),
            ],
            bootstrap: Vec::new(),
            api: DEFAULT_API.into(),
            api_allow_remote: false,
            mdns: true,
            simulate_gpus: None,
            gpu_lock_dir: None,
            price: None,
            prices: BTreeMap::new(),
            region: "unknown".into(),
            offer_ttl: "10m".into(),
            min_lease: "1m".into(),
            max_lease: "7d".into(),
            max_offers_per_provider: 64,
            max_connections: 512,
            target_peers: 24,
            log_format: "text".into(),
            hooks: HooksConfig::default(),
            policy: PolicyConfig::default(),
            tuning: TuningConfig::default(),
        }
    }
}

impl NodeConfig {
    /// Reads a config file. A missing file is the default config.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(NodeConfig::default()),
            Err(source) => return Err(ConfigError::Read { path: path.into(), source }),
        };
        Self::parse(&text).map_err(|message| ConfigError::Parse { path: path.into(), message })
    }

    /// Parses config text.
    pub fn parse(text: &str) -> Result<NodeConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().to_string())
    }

    /// Checks every field and resolves it into [`Settings`].
    pub fn resolve(&self) -> Result<Settings, ConfigError> {
        let network = self.network.trim().to_string();
        if network.is_empty()
            || network.len() > 64
            || !network.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(invalid(
                "network",
                format!(
                    "`{}` is not a network name; use 1-64 letters, digits, `-`, `_` or `.`",
                    self.network
                ),
            ));
        }
        let listen =
            self.listen.iter().map(|a| parse_multiaddr("listen", a)).collect::<Result<Vec<_>, _>>()?;
        if listen.is_empty() {
            return Err(invalid(
                "listen",
                "at least one listen address is needed, e.g. /ip4/0.0.0.0/tcp/4747",
            ));
        }
        let bootstrap = self
            .bootstrap
            .iter()
            .map(|a| {
                let ma = parse_multiaddr("bootstrap", a)?;
                peer_of(&ma).ok_or_else(|| {
                    invalid("bootstrap", format!(
                        "`{a}` does not end in /p2p/<peer id>; give the full address a node prints in `gpumesh status`"
                    ))
                })?;
                Ok(ma)
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let api: SocketAddr = self.api.parse().map_err(|_| {
            invalid(
                "api",
                format!("`{}` is not HOST:PORT, e.g. 127.0.0.1:4748 (port 0 picks a free port)", self.api),
            )
        })?;
        if !api.ip().is_loopback() && !self.api_allow_remote {
            return Err(invalid(
                "api",
                format!(
                    "{api} is not a loopback address; the API controls leases, so set `api_allow_remote = true` in gpumesh.toml if you mean it"
                ),
            ));
        }
        let price = self
            .price
            .as_deref()
            .map(|p| p.parse::<Price>().map_err(|e| invalid("price", e.to_string())))
            .transpose()?;
        if price == Some(Price(0)) {
            return Err(invalid("price", "a price must be above zero"));
        }
        let mut prices = BTreeMap::new();
        for (model, p) in &self.prices {
            let p: Price = p
                .parse()
                .map_err(|e: gpumesh_protocol::price::PriceError| invalid("prices", e.to_string()))?;
            if p.0 == 0 {
                return Err(invalid("prices", format!("price for {model} must be above zero")));
            }
            prices.insert(model.clone(), p);
        }
        if !gpumesh_protocol::spec::is_valid_region(&self.region) {
            return Err(invalid(
                "region",
                format!(
                    "`{}` is not a region code; use an ISO country (US, DE) or a short code like us-east (1-16 letters, digits, -)",
                    self.region
                ),
            ));
        }
        let offer_ttl = duration("offer_ttl", &self.offer_ttl)?;
        let t = &self.tuning;
        let max_offer_ttl = duration("tuning.max_offer_ttl", &t.max_offer_ttl)?;
        if offer_ttl < Duration::from_secs(1) || offer_ttl > max_offer_ttl {
            return Err(invalid(
                "offer_ttl",
                format!(
                    "must be between 1s and {} (tuning.max_offer_ttl)",
                    humantime::format_duration(max_offer_ttl)
                ),
            ));
        }
        let min_lease = duration("min_lease", &self.min_lease)?;
        let max_lease = duration("max_lease", &self.max_lease)?;
        if min_lease > max_lease || max_lease.is_zero() {
            return Err(invalid("max_lease", "max_lease must be above zero and at least min_lease"));
        }
        let log_format = match self.log_format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(invalid("log_format", format!("`{other}` is not text or json"))),
        };
        let node_ids = |field: &'static str, ids: &[String]| {
            ids.iter()
                .map(|s| s.parse::<NodeId>().map_err(|e| invalid(field, e.to_string())))
                .collect::<Result<std::collections::BTreeSet<_>, _>>()
        };
        let allow = node_ids("policy.allow", &self.policy.allow)?;
        let policy = Policy {
            allow: if allow.is_empty() { None } else { Some(allow) },
            deny: node_ids("policy.deny", &self.policy.deny)?,
            max_leases_per_renter: self.policy.max_leases_per_renter,
        };
        if self.max_offers_per_provider == 0 {
            return Err(invalid("max_offers_per_provider", "must be at least 1"));
        }
        let max_connections = self.max_connections.max(8);
        if !(1..=max_connections).contains(&self.target_peers) {
            return Err(invalid(
                "target_peers",
                format!(
                    "`{}` is out of range; use 1 to max_connections ({max_connections}), e.g. 24",
                    self.target_peers
                ),
            ));
        }
        if !(1..=gpumesh_protocol::wire::MAX_SYNC_OFFERS).contains(&t.sync_page_offers) {
            return Err(invalid(
                "tuning.sync_page_offers",
                format!("must be between 1 and {}", gpumesh_protocol::wire::MAX_SYNC_OFFERS),
            ));
        }
        Ok(Settings {
            network,
            listen,
            bootstrap,
            api,
            mdns: self.mdns,
            simulate_gpus: self.simulate_gpus.clone().filter(|s| !s.trim().is_empty()),
            gpu_lock_dir: self
                .gpu_lock_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(crate::inventory::claim::DEFAULT_LOCK_DIR)),
            price,
            prices,
            region: self.region.clone(),
            offer_ttl,
            min_lease,
            max_lease,
            max_offers_per_provider: self.max_offers_per_provider,
            max_connections,
            target_peers: self.target_peers as usize,
            log_format,
            on_lease_start: self.hooks.on_lease_start.clone(),
            on_lease_end: self.hooks.on_lease_end.clone(),
            hook_timeout: hook_timeout(self.hooks.timeout.as_deref().unwrap_or("30s"))?,
            policy,
            gossip_heartbeat: duration("tuning.gossip_heartbeat", &t.gossip_heartbeat)?
                .max(Duration::from_millis(10)),
            sweep_interval: duration("tuning.sweep_interval", &t.sweep_interval)?
                .max(Duration::from_millis(50)),
            ping_interval: duration("tuning.ping_interval", &t.ping_interval)?
                .max(Duration::from_millis(100)),
            bootstrap_retry_max: duration("tuning.bootstrap_retry_max", &t.bootstrap_retry_max)?,
            request_timeout: duration("tuning.request_timeout", &t.request_timeout)?,
            receipt_grace: duration("tuning.receipt_grace", &t.receipt_grace)?,
            idle_connection_timeout: duration("tuning.idle_connection_timeout", &t.idle_connection_timeout)?,
            max_clock_skew: duration("tuning.max_clock_skew", &t.max_clock_skew)?,
            max_offer_ttl,
            sync_page_offers: t.sync_page_offers,
        })
    }
}

/// How the node writes its logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A checked configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub network: String,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub api: SocketAddr,
    pub mdns: bool,
    pub simulate_gpus: Option<String>,
    pub gpu_lock_dir: PathBuf,
    pub price: Option<Price>,
    pub prices: BTreeMap<String, Price>,
    pub region: String,
    pub offer_ttl: Duration,
    pub min_lease: Duration,
    pub max_lease: Duration,
    pub max_offers_per_provider: usize,
    pub max_connections: u32,
    pub target_peers: usize,
    pub log_format: LogFormat,
    pub on_lease_start: Option<PathBuf>,
    pub on_lease_end: Option<PathBuf>,
    pub hook_timeout: Duration,
    pub policy: Policy,
    pub gossip_heartbeat: Duration,
    pub sweep_interval: Duration,
    pub ping_interval: Duration,
    pub bootstrap_retry_max: Duration,
    pub request_timeout: Duration,
    pub receipt_grace: Duration,
    pub idle_connection_timeout: Duration,
    pub max_clock_skew: Duration,
    pub max_offer_ttl: Duration,
    pub sync_page_offers: usize,
}

/// The start and end hooks' time limit: at most what the lease protocol leaves a start hook.
fn hook_timeout(s: &str) -> Result<Duration, ConfigError> {
    let d = duration("hooks.timeout", s)?;
    let max = Duration::from_millis(gpumesh_protocol::wire::MAX_START_HOOK_MS);
    if d > max {
        return Err(invalid(
            "hooks.timeout",
            format!(
                "`{s}` is longer than a start hook may run ({}s): renters wait {}s for a lease's answer, \
                 and a grant that comes later reaches nobody; make the hook faster (pull container \
                 images ahead of time) and set at most {}s",
                max.as_secs(),
                gpumesh_protocol::wire::LEASE_ANSWER_WITHIN_MS / 1000,
                max.as_secs()
            ),
        ));
    }
    Ok(d)
}

/// Parses a humantime duration (`90s`, `10m`, `2h`, `1d`) with a message that names the field.
pub fn duration(field: &'static str, s: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s.trim())
        .map_err(|e| invalid(field, format!("`{s}` is not a duration ({e}); write e.g. 90s, 10m, 2h, 1d")))
}

fn parse_multiaddr(field: &'static str, s: &str) -> Result<Multiaddr, ConfigError> {
    s.trim()
        .parse()
        .map_err(|e| invalid(field, format!("`{s}` is not a multiaddr ({e}); e.g. /ip4/0.0.0.0/tcp/4747")))
}

/// The peer id at the end of a multiaddr (`…/p2p/<peer id>`), if any.
pub fn peer_of(addr: &Multiaddr) -> Option<libp2p::PeerId> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

/// The commented default `gpumesh.toml` written by `gpumesh init`.
pub fn default_config_text(network: &str) -> String {
    format!(
        r#"# gpumesh node configuration. Every setting is optional; command-line flags win.
# Durations are humantime: 90s, 10m, 2h, 1d. Prices are USD per GPU-hour.

# Nodes only talk to nodes of the same network.
network = "{network}"

# Where to listen for peers (TCP with noise+yamux, and QUIC). Port 0 picks a free port.
# listen = ["/ip4/0.0.0.0/tcp/{DEFAULT_P2P_PORT}", "/ip4/0.0.0.0/udp/{DEFAULT_P2P_PORT}/quic-v1"]

# Peers to join through: full addresses ending in /p2p/<peer id> (see `gpumesh status`).
# bootstrap = ["/ip4/203.0.113.7/tcp/{DEFAULT_P2P_PORT}/p2p/12D3KooW..."]

# The local API the CLI talks to. It is protected by a token in this data dir and stays on
# loopback unless api_allow_remote = true.
# api = "{DEFAULT_API}"

# Find peers on the local network.
# mdns = true

# Peers to stay connected to. Beyond this many, connections that carry nothing for this node
# (not in its gossip mesh, no recent capacity, lease or probe traffic) are closed.
# target_peers = 24

# Where this machine is: an ISO country (US, DE) or a short region code (us-east).
# region = "unknown"

# Use simulated GPUs instead of detecting real ones: MODEL[:COUNT[:VRAM_GIB]], comma separated.
# simulate_gpus = "H100-SXM-80GB:2,RTX-4090:1"

# Nodes on one machine lock the real GPUs they offer here, so that no two offer the same GPU.
# gpu_lock_dir = "/tmp/gpumesh-gpu-locks"

# One price for every GPU, or per model (otherwise the catalogue's typical price is used).
# price = "2.10"
# [prices]
# "H100-SXM-80GB" = "2.25"

# How long an offer stays valid; it is re-announced at about a third of this.
# offer_ttl = "10m"
# min_lease = "1m"
# max_lease = "7d"

# [hooks]
# Programs run when a lease starts and ends; they get the lease as JSON on stdin.
# on_lease_start = "/usr/local/bin/gpumesh-start-container"
# on_lease_end = "/usr/local/bin/gpumesh-stop-container"
# timeout = "30s"             # at most 90s: renters wait 120 s for a lease's answer

# [policy]
# allow = []                  # if set, only these renter ids may lease
# deny = []
# max_leases_per_renter = 0   # 0 = no limit
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_resolves_and_the_template_parses_to_it() {
        let s = NodeConfig::default().resolve().unwrap();
        assert_eq!(s.network, "mainnet");
        assert_eq!(s.offer_ttl, Duration::from_secs(600));
        let from_template = NodeConfig::parse(&default_config_text("mainnet")).unwrap();
        assert_eq!(from_template, NodeConfig::default());
    }

    #[test]
    fn bad_values_name_their_field() {
        let check = |toml: &str, field: &str| {
            let err = NodeConfig::parse(toml).unwrap().resolve().unwrap_err().to_string();
            assert!(err.starts_with(&format!("`{field}`")), "{toml}: {err}");
        };
        check("network = \"a b\"", "network");
        check("listen = [\"not-an-addr\"]", "listen");
        check("bootstrap = [\"/ip4/1.2.3.4/tcp/1\"]", "bootstrap");
        check("api = \"localhost\"", "api");
        check("api = \"0.0.0.0:1\"", "api");
        check("price = \"cheap\"", "price");
        check("region = \"somewhere far\"", "region");
        check("offer_ttl = \"soon\"", "offer_ttl");
        check("offer_ttl = \"2h\"", "offer_ttl");
        check("min_lease = \"2h\"\nmax_lease = \"1h\"", "max_lease");
        check("log_format = \"xml\"", "log_format");
        check("[policy]\ndeny = [\"bob\"]", "policy.deny");
        check("target_peers = 0", "target_peers");
        check("max_connections = 16\ntarget_peers = 17", "target_peers");
    }

    #[test]
    fn unknown_keys_and_bad_toml_are_errors() {
        assert!(NodeConfig::parse("nettwork = \"x\"").unwrap_err().contains("nettwork"));
        assert!(NodeConfig::parse("[[[").is_err());
    }
}
