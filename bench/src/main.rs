//! `gpumesh-bench`: measures gpumesh against plain baselines in the same run on the same
//! machine, so figures hold on a noisy shared machine.
//!
//! ```text
//! cargo run --release -p gpumesh-bench -- SUITE [--quick] [--json] [options]
//! SUITE: propagation | ingest | search | lease | capacity | memory | all
//!        swarm-parts (a diagnostic, not in `all`: what each of the node's libp2p
//!        protocols adds to gossipsub alone)
//! ```
//!
//! # Layout
//!
//! - `stats`: percentiles.
//! - `net`: in-process gpumesh nodes and raw libp2p swarms (the baselines).
//! - one module per suite: `propagation`, `ingest`, `search`, `lease`, `capacity`, `memory`.
//! - `offers`: realistic signed offers.

mod capacity;
mod ingest;
mod lease;
mod memory;
mod net;
mod offers;
mod propagation;
mod search;
mod stats;

use anyhow::{Result, bail};
use clap::Parser;
use serde::Serialize;
use serde_json::Value;

/// Benchmarks of gpumesh against baselines measured in the same run.
#[derive(Debug, Parser, Clone)]
#[command(name = "gpumesh-bench", max_term_width = 100)]
pub struct Args {
    /// propagation, ingest, search, lease, capacity, memory, or all; swarm-parts (a diagnostic,
    /// not in all) measures what each of the node's libp2p protocols adds to gossipsub.
    pub suite: String,
    /// Smaller sizes: every suite in about a minute in total on 2 cores.
    #[arg(long)]
    pub quick: bool,
    /// One JSON object per suite on stdout (human tables go to stderr).
    #[arg(long)]
    pub json: bool,
    /// propagation, swarm-parts: number of nodes (default 50; --quick 20).
    #[arg(long)]
    pub nodes: Option<usize>,
    /// propagation: number of offers published (default 200; --quick 60); swarm-parts: per
    /// swarm and round (default 100; --quick 40).
    #[arg(long)]
    pub offers: Option<usize>,
    /// search: offers in the book (default 100000; --quick 20000).
    #[arg(long)]
    pub book: Option<usize>,
    /// lease: number of leases (default 500; --quick 100).
    #[arg(long)]
    pub leases: Option<usize>,
    /// capacity: number of providers (default 50; --quick 20).
    #[arg(long)]
    pub providers: Option<usize>,
    /// memory: testnet size to try (default 100; --quick 20).
    #[arg(long)]
    pub testnet: Option<usize>,
    /// Internal: run one node on this data dir (used by the memory suite).
    #[arg(long, hide = true)]
    pub node_dir: Option<std::path::PathBuf>,
}

impl Args {
    pub fn pick(&self, given: Option<usize>, full: usize, quick: usize) -> usize {
        given.unwrap_or(if self.quick { quick } else { full })
    }
}

/// One suite's result.
#[derive(Debug, Serialize)]
pub struct SuiteResult {
    pub suite: &'static str,
    pub ours: Value,
    pub baseline: Value,
    /// ours ÷ baseline for the headline figure.
    pub ratio: f64,
    /// What the ratio compares.
    pub headline: String,
    pub goal: String,
    /// Whether the goal was met; `None` (JSON `null`) for a diagnostic without one.
    pub goal_met: Option<bool>,
    pub params: Value,
    pub notes: Vec<String>,
}

fn print_human(r: &SuiteResult) {
    eprintln!("\n== {} ==", r.suite);
    eprintln!("  params:   {}", r.params);
    eprintln!("  ours:     {}", r.ours);
    eprintln!("  baseline: {}", r.baseline);
    eprintln!("  ratio:    {:.3}  ({})", r.ratio, r.headline);
    match r.goal_met {
        Some(met) => eprintln!("  goal:     {}  -> {}", r.goal, if met { "met" } else { "NOT met" }),
        None => eprintln!("  goal:     {}", r.goal),
    }
    for n in &r.notes {
        eprintln!("  note:     {n}");
    }
}

fn main() {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run(args: Args) -> Result<()> {
    if let Some(dir) = &args.node_dir {
        return memory::node_process(dir).await;
    }
    let suites: Vec<&str> = match args.suite.as_str() {
        "all" => vec!["propagation", "ingest", "search", "lease", "capacity", "memory"],
        s @ ("propagation" | "ingest" | "search" | "lease" | "capacity" | "memory") => vec![s],
        "swarm-parts" => vec!["swarm-parts"],
        other => {
            bail!(
                "unknown suite `{other}`; use propagation, ingest, search, lease, capacity, memory, all or swarm-parts"
            )
        }
    };
    for s in suites {
        let started = std::time::Instant::now();
        let r = match s {
            "propagation" => propagation::run(&args).await?,
            "ingest" => ingest::run(&args)?,
            "search" => search::run(&args)?,
            "lease" => lease::run(&args).await?,
            "capacity" => capacity::run(&args).await?,
            "swarm-parts" => propagation::parts(&args).await?,
            _ => memory::run(&args).await?,
        };
        print_human(&r);
        eprintln!("  took:     {:.1} s", started.elapsed().as_secs_f64());
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        }
    }
    Ok(())
}
