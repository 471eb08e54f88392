//! `gpumesh`: run a node, search the GPU market, lease GPUs, start a local testnet.
//!
//! # Layout
//!
//! - [`cli`]: the command-line grammar (clap).
//! - [`client`]: the HTTP client of a running node's local API.
//! - [`cmd`]: one module per group of commands.
//! - [`table`]: aligned tables for people.

mod cli;
mod client;
mod cmd;
mod table;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    let code = match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(args: cli::Cli) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().worker_threads(2).build()?;
    rt.block_on(cmd::dispatch(args))
}
