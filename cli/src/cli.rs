//! The command-line grammar.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// gpumesh: a peer-to-peer GPU marketplace node.
///
/// Providers run `gpumesh node` to offer their GPUs; renters search, query live capacity and
/// lease. Most commands talk to the node running on --data-dir.
#[derive(Debug, Parser)]
#[command(name = "gpumesh", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// The node's data directory (key, config, store).
    #[arg(long, global = true, env = "GPUMESH_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// For `node`: where to serve the local API (HOST:PORT, port 0 for any; default
    /// 127.0.0.1:4748). For other commands: the API to talk to, instead of the one the
    /// running node recorded in the data dir.
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub api: Option<String>,
    /// API token (default: read from the data dir).
    #[arg(long, global = true, env = "GPUMESH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the node key and a commented config in the data dir, and print the peer id.
    Init {
        /// Network to join.
        #[arg(long, default_value = "mainnet")]
        network: String,
        /// Replace an existing key (the node gets a new identity).
        #[arg(long)]
        force: bool,
    },
    /// Run a node until Ctrl-C / SIGTERM (initialises the data dir first if needed).
    Node(NodeArgs),
    /// Show this machine's GPUs (no running node needed).
    Gpus {
        /// Show simulated GPUs instead: MODEL[:COUNT[:VRAM_GIB]],…
        #[arg(long, value_name = "SPEC")]
        simulate_gpus: Option<String>,
        /// Print the list as JSON on stdout; if it is empty, why (no NVML, no nvidia-smi) goes
        /// to stderr.
        #[arg(long)]
        json: bool,
    },
    /// Show the running node's identity, addresses and counts.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List connected peers and their round-trip times; `peers block|unblock PEER_ID`.
    Peers {
        #[command(subcommand)]
        action: Option<PeersAction>,
        #[arg(long)]
        json: bool,
    },
    /// Search the offer book, e.g. `gpumesh offers gpu=h100 'price<=2.5' --sort price`.
    Offers(SearchArgs),
    /// Ask every provider for live capacity matching a query.
    Query {
        #[command(flatten)]
        search: SearchArgs,
        /// How long to wait for answers (90s, 500ms…).
        #[arg(long, default_value = "3s", value_parser = duration)]
        timeout: std::time::Duration,
    },
    /// Lease GPUs: `gpumesh lease OFFER_ID --gpus N --duration 2h`, `gpumesh lease --best
    /// [QUERY…] --gpus N --duration 2h`, or `gpumesh lease show LEASE_ID`.
    Lease(LeaseArgs),
    /// List leases on this node (as renter and as provider).
    Leases {
        #[arg(long)]
        json: bool,
    },
    /// End a lease early (as its renter) and get the receipt.
    Release {
        /// Lease id or a unique prefix.
        lease_id: String,
        #[arg(long)]
        json: bool,
    },
    /// List verified usage receipts.
    Receipts {
        #[arg(long)]
        json: bool,
    },
    /// Change the price of this node's offers (all GPU groups, or one model's).
    Price {
        /// USD per GPU-hour, e.g. 2.10.
        usd: String,
        /// Only the group of this model (e.g. H100-SXM-80GB).
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Start a local multi-node network with simulated GPUs.
    Testnet(TestnetArgs),
}

#[derive(Debug, Subcommand)]
pub enum PeersAction {
    /// Disconnect a peer and refuse it until unblocked.
    Block { peer_id: String },
    /// Stop refusing a peer (also lifts an automatic ban for misbehaviour).
    Unblock { peer_id: String },
}

#[derive(Debug, Args, Clone)]
pub struct NodeArgs {
    /// Listen multiaddr (repeatable); default TCP and QUIC on all interfaces.
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// Bootstrap peer, full multiaddr ending in /p2p/<peer id> (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// Network name.
    #[arg(long)]
    pub network: Option<String>,
    /// Simulated GPUs: MODEL[:COUNT[:VRAM_GIB]], comma separated, e.g. H100-SXM-80GB:2,RTX-4090:1.
    #[arg(long, value_name = "SPEC")]
    pub simulate_gpus: Option<String>,
    /// Price in USD per GPU-hour for every GPU.
    #[arg(long, value_name = "USD")]
    pub price: Option<String>,
    /// Region code (ISO country like US, or e.g. us-east).
    #[arg(long)]
    pub region: Option<String>,
    /// How long offers stay valid (re-announced at a third of it).
    #[arg(long, value_name = "DURATION")]
    pub offer_ttl: Option<String>,
    /// Do not discover peers on the LAN with mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Log format.
    #[arg(long, value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    /// Read the config from this file instead of <data dir>/gpumesh.toml.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Stop (cleanly) when the parent process goes away; used by `gpumesh testnet` so its
    /// nodes never outlive it, even when it is killed with SIGKILL.
    #[arg(long, hide = true)]
    pub exit_with_parent: bool,
}

#[derive(Debug, Args, Clone)]
pub struct SearchArgs {
    /// Query terms, all of which must hold: e.g. gpu=h100 vram>=80 'price<=2.5' region=us.
    /// Fields: gpu vram count price region cc interconnect provider latency cpu ram disk duration.
    #[arg(value_name = "QUERY")]
    pub query: Vec<String>,
    /// Sort by price, latency or score (a blend of both).
    #[arg(long, default_value = "price")]
    pub sort: String,
    /// Show at most N offers.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Weight of latency in the score, 0..1.
    #[arg(long, value_name = "W")]
    pub latency_weight: Option<f64>,
    /// First dial and ping the best candidates that have no latency yet.
    #[arg(long)]
    pub probe: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct LeaseArgs {
    /// OFFER_ID (or unique prefix); with --best, query terms; or `show LEASE_ID`.
    #[arg(value_name = "OFFER_ID|QUERY")]
    pub args: Vec<String>,
    /// Search, query live capacity and lease the best offer, trying the next on a reject.
    #[arg(long)]
    pub best: bool,
    /// Number of GPUs.
    #[arg(long)]
    pub gpus: Option<u32>,
    /// How long: 90s, 30m, 2h, 1d.
    #[arg(long, value_parser = duration)]
    pub duration: Option<std::time::Duration>,
    /// Highest price in USD per GPU-hour you accept (default: the offer's price).
    #[arg(long, value_name = "USD")]
    pub max_price: Option<String>,
    /// Your SSH public key file, passed to the provider's start hook.
    #[arg(long, value_name = "FILE")]
    pub ssh_key: Option<PathBuf>,
    /// With --best: sort candidates by price, latency or score.
    #[arg(long, default_value = "score")]
    pub sort: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct TestnetArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
    /// Directory for the nodes' data dirs (default: a temporary dir removed at exit).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Seed of the simulated market (same seed, same GPUs and prices).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// First TCP port (node i listens on P+i); default: any free port.
    #[arg(long, value_name = "P")]
    pub base_port: Option<u16>,
    /// Run a scripted renter session on the ready network and exit.
    #[arg(long)]
    pub demo: bool,
    /// Offer TTL of every node.
    #[arg(long, default_value = "10m")]
    pub offer_ttl: String,
    /// Give up if the network is not ready in this time.
    #[arg(long, default_value = "120s", value_parser = duration)]
    pub ready_timeout: std::time::Duration,
}

/// Parses a humantime duration with a helpful message.
pub fn duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration ({e}); write e.g. 90s, 30m, 2h, 1d"))
}
