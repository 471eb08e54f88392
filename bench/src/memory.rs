//! Memory: resident memory of an idle node and of a node holding 10k offers (each node is
//! its own process), and how many nodes one machine runs as a testnet.

use crate::net::{Arrival, Flavor, RawGossip, wait_until};
use crate::offers;
use crate::{Args, SuiteResult};
use anyhow::{Context, Result, bail};
use gpumesh_node::DataDir;
use gpumesh_node::views::StatusView;
use gpumesh_protocol::envelope;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NET: &str = "bench-memory";

/// Runs one node on `dir` until SIGTERM/SIGINT or until the parent process is gone.
pub async fn node_process(dir: &Path) -> Result<()> {
    let dd = DataDir::new(dir);
    let config = gpumesh_node::NodeConfig::load(&dd.config_path())?;
    let shutdown = async {
        use tokio::signal::unix::{SignalKind, signal};
        let parent = std::os::unix::process::parent_id();
        let orphaned = async {
            while std::os::unix::process::parent_id() == parent {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut t), Ok(mut i)) => {
                tokio::select! { _ = t.recv() => {}, _ = i.recv() => {}, _ = orphaned => {} }
            }
            _ => orphaned.await,
        }
    };
    // Heap in use by the program, by glibc's count, logged every second: the difference
    // from RSS is allocator overhead (arenas, fragmentation) and mapped files.
    #[allow(unsafe_code)]
    tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            // SAFETY: mallinfo2 only reads glibc's allocator statistics.
            let m = unsafe { libc::mallinfo2() };
            eprintln!(
                "heap: in use {:.1} MiB, free in arenas {:.1} MiB, mmapped {:.1} MiB",
                m.uordblks as f64 / 1048576.0,
                m.fordblks as f64 / 1048576.0,
                m.hblkhd as f64 / 1048576.0
            );
        }
    });
    gpumesh_node::run(dd, config, shutdown).await?;
    Ok(())
}

struct Proc {
    child: Child,
    dir: DataDir,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(root: &Path, name: &str, gpus: Option<&str>, bootstrap: Option<&str>) -> Result<Proc> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir)?;
    let mut cfg = format!(
        "network = \"{NET}\"\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\napi = \"127.0.0.1:0\"\nmdns = false\n\
         offer_ttl = \"30m\"\nmax_offers_per_provider = 64\n"
    );
    if let Some(g) = gpus {
        cfg.push_str(&format!("simulate_gpus = \"{g}\"\n"));
    }
    if let Some(b) = bootstrap {
        cfg.push_str(&format!("bootstrap = [\"{b}\"]\n"));
    }
    cfg.push_str("[tuning]\ngossip_heartbeat = \"200ms\"\nsweep_interval = \"2s\"\nping_interval = \"5s\"\nbootstrap_retry_max = \"2s\"\n");
    std::fs::write(dir.join("gpumesh.toml"), cfg)?;
    let log = std::fs::File::create(root.join(format!("{name}.log")))?;
    let child = Command::new(std::env::current_exe()?)
        .arg("memory")
        .arg("--node-dir")
        .arg(&dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting a node process")?;
    Ok(Proc { child, dir: DataDir::new(dir) })
}

async fn status(http: &reqwest::Client, dir: &DataDir) -> Option<StatusView> {
    let info = dir.read_api_info().ok()?;
    let token = dir.read_token().ok()?;
    let r = http.get(format!("http://{}/v1/status", info.api)).bearer_auth(token).send().await.ok()?;
    r.json().await.ok()
}

/// The last heap line a node process logged (see [`node_process`]).
fn last_heap_line(root: &Path, name: &str) -> String {
    std::fs::read_to_string(root.join(format!("{name}.log")))
        .ok()
        .and_then(|l| l.lines().rev().find(|l| l.starts_with("heap:")).map(str::to_string))
        .unwrap_or_default()
}

/// One line of a process's `/proc/PID/status` in MiB (`VmRSS`, `RssAnon`, `RssFile`).
fn status_mib(pid: u32, field: &str) -> Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field}"))?;
    Ok(kb / 1024.0)
}

/// Resident memory of a process, MiB.
fn rss_mib(pid: u32) -> Result<f64> {
    status_mib(pid, "VmRSS")
}

/// RSS once it has stopped moving: after one allocator trim period (the node hands freed
/// memory back every `TRIM_EVERY`, so a reading right after a burst would count what it is
/// about to return), two readings 500 ms apart within 1 %, at most 10 s more.
async fn settled_rss(pid: u32) -> Result<f64> {
    tokio::time::sleep(gpumesh_node::alloc::TRIM_EVERY + Duration::from_millis(500)).await;
    let mut last = rss_mib(pid)?;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss_mib(pid)?;
        if (now - last).abs() <= last * 0.01 {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

pub async fn run(args: &Args) -> Result<SuiteResult> {
    let tmp = tempfile::tempdir()?;
    let root: PathBuf = tmp.path().to_path_buf();
    let http = reqwest::Client::new();
    let target = 10_000usize;

    // Idle node.
    let node = spawn(&root, "loaded", None, None)?;
    let h = &http;
    let d = &node.dir;
    wait_until("the node's API", Duration::from_secs(60), || async move { status(h, d).await.is_some() })
        .await?;
    let pid = node.child.id();
    let idle = settled_rss(pid).await?;

    // 10k offers: a raw gossip peer publishes them (200 providers × 50 offers).
    let st = status(&http, &node.dir).await.context("status")?;
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel::<Arrival>();
    let publisher = RawGossip::start(0, Flavor::Raw, NET, tx).await?;
    publisher.dial(&st.listen_addrs[0].parse()?);
    let p = &publisher;
    wait_until("the publisher in the node's mesh", Duration::from_secs(30), || async move {
        p.topic_peers().await > 0
    })
    .await?;
    let now = gpumesh_node::clock::now();
    let keys: Vec<_> = (0..200u64).map(|i| offers::key(10_000 + i)).collect();
    let mut bytes_total = 0usize;
    let t = Instant::now();
    for chunk in 0..(target / 200) {
        for (ki, k) in keys.iter().enumerate() {
            let i = (chunk * 200 + ki) as u64;
            let env = envelope::seal(k, &offers::offer(k, NET, i, chunk as u64 + 1, i + 1, now));
            bytes_total += env.len();
            if !publisher.publish(env).await {
                bail!("publishing to the node failed");
            }
        }
        let want = (chunk + 1) * 200;
        wait_until("the node to take the offers", Duration::from_secs(60), || async move {
            status(h, d).await.is_some_and(|s| s.offers_known >= want)
        })
        .await?;
    }
    let fill_s = t.elapsed().as_secs_f64();

    // A node that joins the loaded one and gets the same 10k offers by book sync (3 pages),
    // the way a node joining a network that holds them does: no gossip burst behind it.
    let joined = spawn(&root, "joined", None, Some(&st.listen_addrs[0]))?;
    let jd = &joined.dir;
    wait_until("the joined node to sync the 10k offers", Duration::from_secs(120), || async move {
        status(h, jd).await.is_some_and(|s| s.offers_known >= target)
    })
    .await?;
    let jpid = joined.child.id();
    // Both settle at once (each waits out a trim period); the loaded node has served the sync.
    let (loaded, synced) = tokio::try_join!(settled_rss(pid), settled_rss(jpid))?;
    // Private memory, and pages of mapped files (mostly the program's own code, shared by
    // every node process on the machine).
    let (anon, file) = (status_mib(pid, "RssAnon")?, status_mib(pid, "RssFile")?);
    let (janon, jfile) = (status_mib(jpid, "RssAnon")?, status_mib(jpid, "RssFile")?);
    tokio::time::sleep(Duration::from_millis(1100)).await; // one more heap line in the logs
    let heap = last_heap_line(&root, "loaded");
    drop(joined);
    drop(node);

    // A testnet of M node processes, each with one GPU group.
    let m = args.pick(args.testnet, 100, 20);
    let started = Instant::now();
    let first = spawn(&root, "t-0", Some("RTX-4090:1"), None)?;
    let fd = &first.dir;
    wait_until("testnet node 0", Duration::from_secs(60), || async move { status(h, fd).await.is_some() })
        .await?;
    let boot = status(&http, &first.dir).await.context("status")?.listen_addrs[0].clone();
    let mut procs = vec![first];
    for i in 1..m {
        procs.push(spawn(&root, &format!("t-{i}"), Some("RTX-4090:1"), Some(&boot))?);
    }
    let procs_ref = &procs;
    let ready = wait_until("every node to hold every offer", Duration::from_secs(600), || async move {
        for p in procs_ref {
            if status(h, &p.dir).await.is_none_or(|s| s.offers_known < m) {
                return false;
            }
        }
        true
    })
    .await;
    let ready_s = started.elapsed().as_secs_f64();
    let mut total = 0.0;
    for p in &procs {
        total += rss_mib(p.child.id()).unwrap_or(0.0);
    }
    drop(procs);
    let ratio = synced / idle;
    let goal_mib = 40.0 * 1_000_000.0 / 1_048_576.0;
    let burst_verdict = if loaded <= goal_mib { "within" } else { "over" };
    Ok(SuiteResult {
        suite: "memory",
        ours: json!({"rss_10k_offers_mib": synced,
                     "joined_by_sync": {"rss_mib": synced, "rss_anon_mib": janon, "rss_file_mib": jfile},
                     "after_gossip_burst": {"rss_mib": loaded, "rss_anon_mib": anon, "rss_file_mib": file, "fill_s": fill_s},
                     "offer_bytes_mib": bytes_total as f64 / 1048576.0,
                     "testnet": {"nodes": m, "ready": ready.is_ok(), "ready_s": ready_s, "total_rss_mib": total, "rss_per_node_mib": total / m as f64}}),
        baseline: json!({"rss_idle_mib": idle}),
        ratio,
        headline: "RSS of a node that joined a network holding 10k offers and synced them / RSS of the same node idle".into(),
        goal: "<= 40 MB with 10k offers".into(),
        goal_met: Some(synced <= goal_mib),
        params: json!({"offers": target, "providers": 200, "testnet_nodes": m}),
        notes: vec![
            format!(
                "node that joined and synced the 10k offers: RSS {synced:.1} MiB = {janon:.1} MiB private + {jfile:.1} MiB of mapped files (program code, shared between node processes); {}",
                last_heap_line(&root, "joined")
            ),
            format!(
                "node that received the 10k offers as a gossip burst ({fill_s:.1} s) and then served the sync: RSS {loaded:.1} MiB = {anon:.1} MiB private + {file:.1} MiB of mapped files, {burst_verdict} the goal; {heap}; gossipsub keeps a burst's messages in its caches for 2 minutes and its tables at their peak size"
            ),
            format!(
                "testnet of {m} node processes: {} in {ready_s:.1} s, {total:.0} MiB in all",
                if ready.is_ok() { "ready" } else { "NOT ready" }
            ),
        ],
    })
}
