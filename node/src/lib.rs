//! # gpumesh-node
//!
//! A gpumesh node: it joins the peer-to-peer network, keeps a validated offer book, advertises
//! local GPUs, answers and makes lease requests, and serves a local HTTP/JSON API.
//!
//! # Layout
//!
//! - [`clock`]: the only reader of the system clock and the OS random source.
//! - [`config`]: `gpumesh.toml` ([`config::NodeConfig`]) and its checked form ([`config::Settings`]).
//! - [`datadir`]: key, token, API address file and store paths of a data directory.
//! - [`store`]: the sled store (offers, leases, GPU reservations, sequence counter).
//! - [`metrics`]: Prometheus metrics.
//! - [`inventory`]: GPU detection (NVML, nvidia-smi), simulated GPUs, the model catalogue.
//! - [`net`]: the libp2p behaviour and swarm construction.
//! - [`event_loop`]: the one task that owns the swarm and the offer book.
//! - [`lease_task`]: the task that owns the lease state machines, hooks and advertising.
//! - [`handle`]: [`NodeHandle`] and the `Command`s it sends.
//! - [`hooks`]: running the provider's lease start and end programs.
//! - [`views`]: the JSON shapes the API returns.
//! - [`api`]: the local HTTP/JSON API.
//! - [`node`]: [`start`] and [`run`]: wiring it all together, and shutdown.
pub mod alloc;
pub mod api;
pub mod clock;
pub mod config;
pub mod datadir;
mod event_loop;
pub mod handle;
pub mod hooks;
pub mod inventory;
pub mod lease_task;
pub mod metrics;
pub mod net;
pub mod node;
pub mod store;
pub mod views;

pub use config::{NodeConfig, Settings};
pub use datadir::DataDir;
pub use handle::NodeHandle;
pub use node::{NodeError, RunningNode, run, start};
