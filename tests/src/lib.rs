//! # gpumesh-tests
//!
//! Shared harness for the multi-node tests in `tests/tests/`: in-process nodes on 127.0.0.1
//! port 0 with fast timers, `gpumesh` processes for crash and CLI tests, and waiting on
//! conditions with deadlines (never sleeping as synchronisation).
//!
//! # Layout
//!
//! - [`TestNode`]: an in-process node in a temporary data dir, plus its API client.
//! - [`Proc`]: a `gpumesh` child process, killed when dropped.
//! - [`wait_for`]: poll a condition until it holds or a deadline passes; [`within`]: one call
//!   with a deadline.
//! - [`adversary`]: raw libp2p peers that send hostile gossip and requests, and builders of
//!   mis-signed and malformed messages.
//! - [`measure`]: a seeded RNG, latency percentiles, resident memory.

pub mod adversary;
pub mod measure;

use anyhow::{Context, Result, bail};
use gpumesh_node::config::NodeConfig;
use gpumesh_node::views::{OfferView, StatusView};
use gpumesh_node::{DataDir, RunningNode};
use std::ffi::OsStr;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A config for tests: loopback TCP on port 0, API on port 0, no mDNS, fast timers.
pub fn test_config(network: &str, gpus: Option<&str>, bootstrap: &[String]) -> NodeConfig {
    let mut c = NodeConfig {
        network: network.into(),
        listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
        bootstrap: bootstrap.to_vec(),
        api: "127.0.0.1:0".into(),
        mdns: false,
        simulate_gpus: gpus.map(str::to_string),
        offer_ttl: "60s".into(),
        min_lease: "1s".into(),
        max_lease: "1d".into(),
        ..NodeConfig::default()
    };
    c.tuning.gossip_heartbeat = "100ms".into();
    c.tuning.sweep_interval = "200ms".into();
    c.tuning.ping_interval = "500ms".into();
    c.tuning.bootstrap_retry_max = "1s".into();
    c.tuning.request_timeout = "5s".into();
    c.tuning.receipt_grace = "30s".into();
    c
}

/// Polls `check` every 50 ms until it returns true; fails after `timeout` naming `what`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll(what, timeout, || {
        let f = check();
        async move { f.await.then_some(()) }
    })
    .await
}

/// Polls `get` every 50 ms until it returns `Some`; fails after `timeout` naming `what`.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut get: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        // A check that never returns (a node whose event loop is stuck) fails at the deadline
        // too, rather than hanging the test.
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(5));
        match tokio::time::timeout(left, get()).await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(_) => bail!("timed out waiting for {what}: a check did not return within {left:?}"),
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `fut`, failing after `timeout` naming `what` (for single calls into a node that must
/// answer, so that a stuck node fails the test instead of hanging it).
pub async fn within<T>(what: &str, timeout: Duration, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| anyhow::anyhow!("{what} did not finish within {timeout:?}"))
}

/// An in-process node in its own temporary data dir.
#[derive(Debug)]
pub struct TestNode {
    pub node: Option<RunningNode>,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub http: reqwest::Client,
}

impl TestNode {
    /// Starts a node in a fresh temporary dir.
    pub async fn start(config: NodeConfig) -> Result<TestNode> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("node");
        let mut n = TestNode::start_in(&dir, config).await?;
        n._tmp = Some(tmp);
        Ok(n)
    }

    /// Starts a node on an existing (or new) data dir that the caller owns.
    pub async fn start_in(dir: &Path, config: NodeConfig) -> Result<TestNode> {
        let node = gpumesh_node::start(DataDir::new(dir), config).await.context("starting a test node")?;
        Ok(TestNode { node: Some(node), dir: dir.to_path_buf(), _tmp: None, http: reqwest::Client::new() })
    }

    pub fn running(&self) -> &RunningNode {
        self.node.as_ref().expect("test node is running")
    }

    pub fn handle(&self) -> &gpumesh_node::NodeHandle {
        &self.running().handle
    }

    pub fn peer_id(&self) -> String {
        self.running().peer_id.clone()
    }

    pub async fn status(&self) -> Result<StatusView> {
        Ok(self.handle().status().await?)
    }

    /// The first listen address, with `/p2p/<peer id>`.
    pub async fn addr(&self) -> Result<String> {
        let h = self.handle().clone();
        poll("a listen address", Duration::from_secs(10), || {
            let h = h.clone();
            async move { h.status().await.ok().and_then(|s| s.listen_addrs.first().cloned()) }
        })
        .await
    }

    /// Every offer in this node's book.
    pub async fn offers(&self) -> Result<Vec<OfferView>> {
        Ok(self
            .handle()
            .offers(gpumesh_node::handle::Search {
                query: Default::default(),
                sort: Default::default(),
                limit: usize::MAX,
                latency_weight: 0.5,
            })
            .await?)
    }

    /// Offers of one provider in this node's book.
    pub async fn offers_of(&self, provider: &str) -> Result<Vec<OfferView>> {
        Ok(self.offers().await?.into_iter().filter(|o| o.provider == provider).collect())
    }

    /// An authenticated GET on the node's API, as text.
    pub async fn api_get(&self, path: &str) -> Result<String> {
        let n = self.running();
        let r = self.http.get(format!("http://{}{path}", n.api)).bearer_auth(&n.token).send().await?;
        Ok(r.error_for_status()?.text().await?)
    }

    /// The value of a Prometheus counter line that starts with `prefix` (summed over matches).
    pub async fn metric_sum(&self, prefix: &str) -> Result<f64> {
        let text = self.api_get("/metrics").await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Stops the node cleanly (withdraws offers).
    pub async fn stop(&mut self) {
        if let Some(n) = self.node.take() {
            n.stop().await;
        }
    }

    /// Kills the node's tasks without withdrawing anything.
    pub async fn crash(&mut self) {
        if let Some(n) = self.node.take() {
            n.crash().await;
        }
    }
}

/// The `gpumesh` binary, built once per test process.
pub fn gpumesh_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // `cargo test` sets variables (LD_LIBRARY_PATH, CARGO_PKG_*…) that some build scripts
        // track; passing them on would make this build differ from a plain one and recompile
        // the C parts of the QUIC stack every time. Keep only what cargo itself needs, and
        // the user's build settings (dropping RUSTFLAGS would rebuild every dependency).
        let keep = [
            "PATH",
            "HOME",
            "CARGO_HOME",
            "RUSTUP_HOME",
            "RUSTUP_TOOLCHAIN",
            "CARGO_TARGET_DIR",
            "TMPDIR",
            "RUSTFLAGS",
            "RUSTC_WRAPPER",
            "CARGO_INCREMENTAL",
        ];
        let kept = |k: &str| {
            keep.contains(&k)
                || ["CARGO_BUILD_", "CARGO_PROFILE_", "CARGO_REGISTRIES_"].iter().any(|p| k.starts_with(p))
        };
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "gpumesh-cli", "--bin", "gpumesh"])
            .current_dir(&root)
            .env_clear()
            .envs(std::env::vars().filter(|(k, _)| kept(k)))
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building gpumesh failed");
        let target =
            std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
        target.join("debug").join("gpumesh")
    })
    .clone()
}

/// Runs `gpumesh --data-dir DIR ARGS…` to completion; returns (exit code, stdout, stderr).
pub fn gpumesh(dir: &Path, args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(gpumesh_bin()).arg("--data-dir").arg(dir).args(args).output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Runs `gpumesh --data-dir DIR ARGS…` and parses its standard output as JSON, if it exits 0.
pub fn gpumesh_json(dir: &Path, args: &[&str]) -> Option<serde_json::Value> {
    match gpumesh(dir, args) {
        Ok((0, out, _)) => serde_json::from_str(&out).ok(),
        _ => None,
    }
}

/// A TCP proxy on 127.0.0.1 (port 0) to `upstream` that holds every chunk of bytes for
/// `one_way` before passing it on, in both directions and in order: a link with a round
/// trip of twice `one_way`, for tests that count round trips. Returns the proxy's address;
/// the proxy runs until the test's runtime ends.
pub async fn delay_proxy(upstream: std::net::SocketAddr, one_way: Duration) -> Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else { continue };
            let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::spawn(delayed_pump(in_read, out_write, one_way));
            tokio::spawn(delayed_pump(out_read, in_write, one_way));
        }
    });
    Ok(addr)
}

/// Copies `from` to `to`, each chunk `delay` after it was read; closes `to`'s write side
/// after the last one.
async fn delayed_pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            // Holding the chunk is the link's latency, not a wait for some other event.
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        if tx.send((tokio::time::Instant::now() + delay, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for a process that must come back on
/// the same port after a restart; everything else binds port 0).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running `gpumesh` process, killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
    pub dir: PathBuf,
}

impl Proc {
    /// Starts `gpumesh --data-dir DIR node ARGS…` with logs to `DIR.log`.
    pub fn node(dir: &Path, args: &[&str]) -> Result<Proc> {
        Proc::node_with_api(dir, "127.0.0.1:0", args)
    }

    /// Like [`Proc::node`] with the API on `api`. Logs are appended to `DIR.log`, so a
    /// restarted node's log follows the previous run's.
    pub fn node_with_api(dir: &Path, api: &str, args: &[&str]) -> Result<Proc> {
        Proc::node_with_env(dir, api, &[], args)
    }

    /// Like [`Proc::node_with_api`] with these environment variables set (e.g. a `PATH` that
    /// holds a stand-in `nvidia-smi`).
    pub fn node_with_env(dir: &Path, api: &str, env: &[(&str, &OsStr)], args: &[&str]) -> Result<Proc> {
        std::fs::create_dir_all(dir)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.with_extension("log"))?;
        let child = Command::new(gpumesh_bin())
            .arg("--data-dir")
            .arg(dir)
            .arg("--api")
            .arg(api)
            .arg("node")
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        Ok(Proc { child, dir: dir.to_path_buf() })
    }

    /// Waits until the node has written its API address and answers `status`.
    pub async fn ready(&self) -> Result<StatusView> {
        let dir = self.dir.clone();
        poll("the node's API", Duration::from_secs(30), || {
            let dir = dir.clone();
            async move {
                match gpumesh(&dir, &["status", "--json"]) {
                    Ok((0, out, _)) => serde_json::from_str::<StatusView>(&out).ok(),
                    _ => None,
                }
            }
        })
        .await
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (by number: 2 = SIGINT, 9 = SIGKILL, 15 = SIGTERM) to the process.
    pub fn signal(&self, sig: i32) -> Result<()> {
        kill(self.child.id() as i32, sig)
    }

    /// Waits for the process to exit; returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                bail!("process {} did not exit within {timeout:?}", self.child.id());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a signal with the `kill` utility (the workspace forbids `unsafe`, which `libc::kill`
/// needs).
pub fn kill(pid: i32, sig: i32) -> Result<()> {
    let status = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status()?;
    if !status.success() {
        bail!("kill -{sig} {pid} failed");
    }
    Ok(())
}
