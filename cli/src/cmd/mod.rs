//! Command implementations.
//!
//! - [`node`]: `init`, `node`, `gpus` (work on the data dir; no running node needed).
//! - [`market`]: `status`, `peers`, `offers`, `query`, `price`.
//! - [`lease`]: `lease`, `leases`, `release`, `receipts`.
//! - [`testnet`]: the local multi-node testnet.

pub mod lease;
pub mod market;
pub mod node;
pub mod testnet;

use crate::cli::{Cli, Command};
use crate::client::Client;
use anyhow::Result;
use gpumesh_node::DataDir;

/// Runs one command; returns the exit code.
pub async fn dispatch(cli: Cli) -> Result<i32> {
    let data_dir = DataDir::new(cli.data_dir.clone().unwrap_or_else(DataDir::default_root));
    let client = || Client::new(&data_dir, cli.api.as_deref(), cli.token.as_deref());
    match cli.command {
        Command::Init { network, force } => node::init(&data_dir, &network, force),
        Command::Node(args) => node::node(&data_dir, cli.api.as_deref(), args).await,
        Command::Gpus { simulate_gpus, json } => node::gpus(&data_dir, simulate_gpus, json),
        Command::Status { json } => market::status(&client()?, json).await,
        Command::Peers { action: None, json } => market::peers(&client()?, json).await,
        Command::Peers { action: Some(a), json } => market::block(&client()?, a, json).await,
        Command::Offers(s) => market::offers(&client()?, &s).await,
        Command::Query { search, timeout } => market::query(&client()?, &search, timeout).await,
        Command::Lease(args) => lease::lease(&client()?, args).await,
        Command::Leases { json } => lease::leases(&client()?, json).await,
        Command::Release { lease_id, json } => lease::release(&client()?, &lease_id, json).await,
        Command::Receipts { json } => lease::receipts(&client()?, json).await,
        Command::Price { usd, model, json } => market::price(&client()?, usd, model, json).await,
        Command::Testnet(args) => testnet::testnet(args).await,
    }
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
