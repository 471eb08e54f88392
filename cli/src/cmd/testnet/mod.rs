//! `gpumesh testnet`: a local multi-node network with simulated GPUs.
//!
//! It writes a config per node (`DIR/node-i/gpumesh.toml`), starts `gpumesh node` processes
//! joined through node 0, shows progress until every node's book holds every provider's
//! offers, writes `DIR/testnet.json`, and runs until Ctrl-C / SIGTERM (or, with `--demo`, runs
//! a scripted renter session and exits). Nodes run with `--exit-with-parent`, so they never
//! outlive the testnet, even when it is killed with SIGKILL.
//!
//! - [`market`]: the seeded simulated market.
//! - [`demo`]: the scripted renter session.

mod demo;
pub mod market;

use crate::cli::TestnetArgs;
use crate::client::Client;
use crate::table::Table;
use anyhow::{Context, Result, bail};
use gpumesh_node::DataDir;
use gpumesh_node::views::StatusView;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use market::SimNode;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One node's entry in `testnet.json`.
#[derive(Debug, Serialize, serde::Deserialize, Clone)]
pub struct NodeEntry {
    pub name: String,
    pub data_dir: PathBuf,
    pub peer_id: String,
    pub api: String,
    pub pid: u32,
    pub listen_addrs: Vec<String>,
}

/// A running node process of the testnet.
struct NodeProc {
    name: String,
    dir: DataDir,
    child: Child,
    sim: SimNode,
}

/// The node processes; stopped (SIGTERM, then SIGKILL) when dropped.
struct Nodes(Vec<NodeProc>);

impl Drop for Nodes {
    fn drop(&mut self) {
        stop_all(&mut self.0, Duration::from_secs(10));
    }
}

/// Sends SIGTERM to every node still running, waits up to `grace`, then kills what is left.
fn stop_all(nodes: &mut [NodeProc], grace: Duration) {
    for n in nodes.iter_mut() {
        if matches!(n.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill").arg("-TERM").arg(n.child.id().to_string()).status();
        }
    }
    let deadline = Instant::now() + grace;
    for n in nodes.iter_mut() {
        loop {
            match n.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = n.child.kill();
                    let _ = n.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The config file of one testnet node.
fn node_config(sim: &SimNode, listen: &str, bootstrap: Option<&str>, ttl: &str) -> String {
    let mut c = format!(
        "# Written by `gpumesh testnet`.\nnetwork = \"testnet\"\nlisten = [{}]\napi = \"127.0.0.1:0\"\nmdns = false\n\
         region = {}\nsimulate_gpus = {}\noffer_ttl = {}\nmin_lease = \"10s\"\nmax_lease = \"7d\"\n",
        toml_str(listen),
        toml_str(&sim.region),
        toml_str(&sim.spec()),
        toml_str(ttl),
    );
    if let Some(b) = bootstrap {
        c.push_str(&format!("bootstrap = [{}]\n", toml_str(b)));
    }
    c.push_str("\n[prices]\n");
    for g in &sim.groups {
        c.push_str(&format!("{} = {}\n", toml_str(&g.model), toml_str(&g.price)));
    }
    c.push_str("\n[tuning]\ngossip_heartbeat = \"200ms\"\nsweep_interval = \"1s\"\nping_interval = \"5s\"\nbootstrap_retry_max = \"2s\"\n");
    c
}

fn spawn_node(dir: &DataDir, log: &Path) -> Result<Child> {
    let exe = std::env::current_exe().context("finding the gpumesh binary")?;
    let log = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Command::new(exe)
        .arg("--data-dir")
        .arg(dir.root())
        .args(["node", "--exit-with-parent"])
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info,libp2p=warn,libp2p_gossipsub=error".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting a node process")
}

/// The status of a node, if its API answers.
async fn status_of(dir: &DataDir) -> Option<StatusView> {
    let c = Client::new(dir, None, None).ok()?;
    c.get::<StatusView>("/v1/status").await.ok()
}

pub async fn testnet(args: TestnetArgs) -> Result<i32> {
    if args.nodes == 0 || args.nodes > 200 {
        bail!("--nodes must be between 1 and 200");
    }
    humantime::parse_duration(&args.offer_ttl)
        .with_context(|| format!("--offer-ttl `{}`", args.offer_ttl))?;
    let (root, _tmp) = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            (d.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new().prefix("gpumesh-testnet-").tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let started = Instant::now();
    let market = market::generate(args.nodes, args.seed);
    let total_offers: usize = market.iter().map(|n| n.groups.len()).sum();

    let mp = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>18} [{bar:30}] {pos}/{len} {msg}")
        .expect("static template")
        .progress_chars("=> ");
    let bar = |len: usize, prefix: &'static str| {
        let b = mp.add(ProgressBar::new(len as u64));
        b.set_style(style.clone());
        b.set_prefix(prefix);
        b
    };
    let up_bar = bar(args.nodes, "nodes up");
    let peer_bar = bar(args.nodes, "nodes with peers");
    let offer_bar = bar(args.nodes * total_offers, "offers propagated");

    let mut nodes = Nodes(Vec::new());
    let mut boot: Option<String> = None;
    for (i, sim) in market.into_iter().enumerate() {
        let name = format!("node-{i}");
        let dir = DataDir::new(root.join(&name));
        if !dir.is_initialised() {
            dir.init("testnet", false)?;
        }
        let port = args.base_port.map_or(0, |p| p as u32 + i as u32);
        if port > u16::MAX as u32 {
            bail!("--base-port {} + {} nodes runs past port 65535", args.base_port.unwrap_or(0), args.nodes);
        }
        let listen = format!("/ip4/127.0.0.1/tcp/{port}");
        std::fs::write(dir.config_path(), node_config(&sim, &listen, boot.as_deref(), &args.offer_ttl))?;
        let _ = std::fs::remove_file(dir.api_path());
        let child = spawn_node(&dir, &root.join(format!("{name}.log")))?;
        nodes.0.push(NodeProc { name, dir, child, sim });
        if i == 0 {
            // Everyone joins through node 0: wait until it is up and knows its address.
            let deadline = Instant::now() + args.ready_timeout;
            loop {
                if let Some(s) = status_of(&nodes.0[0].dir).await.filter(|s| !s.listen_addrs.is_empty()) {
                    boot = Some(s.listen_addrs[0].clone());
                    break;
                }
                check_alive(&mut nodes.0, &root)?;
                if Instant::now() > deadline {
                    bail!("node-0 did not start; see {}", root.join("node-0.log").display());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    // Wait until every node's book holds every provider's offers.
    let deadline = Instant::now() + args.ready_timeout;
    let statuses = loop {
        let mut statuses = Vec::new();
        for n in &nodes.0 {
            statuses.push(status_of(&n.dir).await);
        }
        up_bar.set_position(statuses.iter().filter(|s| s.is_some()).count() as u64);
        peer_bar.set_position(statuses.iter().flatten().filter(|s| s.peers > 0).count() as u64);
        offer_bar.set_position(
            statuses.iter().flatten().map(|s| s.offers_known.min(total_offers)).sum::<usize>() as u64,
        );
        let ready = statuses.iter().all(|s| {
            s.as_ref().is_some_and(|s| s.offers_known == total_offers && s.providers_known == args.nodes)
        });
        if ready {
            break statuses.into_iter().flatten().collect::<Vec<_>>();
        }
        check_alive(&mut nodes.0, &root)?;
        if Instant::now() > deadline {
            bail!(
                "the testnet was not ready after {} (offers propagated {}/{}); see the logs in {}",
                humantime::format_duration(args.ready_timeout),
                offer_bar.position(),
                offer_bar.length().unwrap_or(0),
                root.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for b in [&up_bar, &peer_bar, &offer_bar] {
        b.finish();
    }
    let ready_in = started.elapsed();

    let entries: Vec<NodeEntry> = nodes
        .0
        .iter()
        .zip(&statuses)
        .map(|(n, s)| NodeEntry {
            name: n.name.clone(),
            data_dir: n.dir.root().to_path_buf(),
            peer_id: s.peer_id.clone(),
            api: s.api.clone(),
            pid: n.child.id(),
            listen_addrs: s.listen_addrs.clone(),
        })
        .collect();
    let json_path = root.join("testnet.json");
    let tmp_path = root.join("testnet.json.tmp");
    std::fs::write(&tmp_path, serde_json::to_string_pretty(&entries)?)?;
    std::fs::rename(&tmp_path, &json_path)?;

    println!(
        "\ntestnet ready: {} nodes, {} offers, in {:.1} s  ({})",
        args.nodes,
        total_offers,
        ready_in.as_secs_f64(),
        json_path.display()
    );
    print_market(&nodes.0, &entries);
    let last = root.join(format!("node-{}", args.nodes - 1)).display().to_string();

    if args.demo {
        let renter = &nodes.0[args.nodes - 1];
        let ok = demo::run(&renter.dir).await;
        drop(nodes);
        return Ok(if ok { 0 } else { 1 });
    }

    println!("\nTry (in another terminal):");
    println!("  gpumesh --data-dir {last} offers 'gpu=h100' --sort price");
    println!("  gpumesh --data-dir {last} query 'vram>=40' --sort score");
    println!("  gpumesh --data-dir {last} lease --best 'vram>=24' --gpus 1 --duration 10m");
    println!("  gpumesh --data-dir {last} leases");
    println!("  gpumesh --data-dir {last} release <lease id>");
    println!("  gpumesh --data-dir {last} receipts");
    println!("\nCtrl-C stops every node.");
    wait_for_signal(&mut nodes.0, &root).await?;
    eprintln!("stopping {} nodes…", nodes.0.len());
    stop_all(&mut nodes.0, Duration::from_secs(15));
    Ok(0)
}

/// Fails if a node process has exited (it should not, until we stop it).
fn check_alive(nodes: &mut [NodeProc], root: &Path) -> Result<()> {
    for n in nodes.iter_mut() {
        if let Ok(Some(status)) = n.child.try_wait() {
            bail!("{} exited ({status}); see {}", n.name, root.join(format!("{}.log", n.name)).display());
        }
    }
    Ok(())
}

async fn wait_for_signal(nodes: &mut [NodeProc], root: &Path) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = int.recv() => return Ok(()),
            _ = term.recv() => return Ok(()),
            _ = tick.tick() => {
                if let Err(e) = check_alive(nodes, root) {
                    eprintln!("warning: {e:#}");
                }
            }
        }
    }
}

fn print_market(nodes: &[NodeProc], entries: &[NodeEntry]) {
    let mut t = Table::new(&["NODE", "PEER", "REGION", "GPUS", "USD/GPU-H", "API"]);
    for (n, e) in nodes.iter().zip(entries) {
        let gpus =
            n.sim.groups.iter().map(|g| format!("{}×{}", g.count, g.model)).collect::<Vec<_>>().join(" + ");
        let prices = n.sim.groups.iter().map(|g| g.price.clone()).collect::<Vec<_>>().join(" / ");
        t.row(vec![n.name.clone(), short(&e.peer_id), n.sim.region.clone(), gpus, prices, e.api.clone()]);
    }
    print!("{}", t.render());
}

fn short(peer: &str) -> String {
    format!("…{}", &peer[peer.len().saturating_sub(8)..])
}
