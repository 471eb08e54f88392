//! Starting and stopping a node: [`start`] wires the store, inventory, swarm event loop,
//! lease task and API together; [`RunningNode::stop`] shuts them down in order (withdraw
//! offers, let gossip go out, flush, close the API).

use crate::config::{NodeConfig, Settings};
use crate::datadir::{ApiInfo, DataDir, DataDirError};
use crate::event_loop::{EventLoop, EventLoopParts};
use crate::handle::{Command, NodeHandle};
use crate::inventory::{self, DetectedGpu, GpuSource};
use crate::lease_task::{LeaseCommand, LeaseTask, LeaseTaskParts, OfferedGroup};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use gpumesh_protocol::{HostSpec, NodeId, Price};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    #[error("--simulate-gpus: {0}")]
    Simulate(#[from] inventory::SimulateError),
    #[error(
        "cannot serve the API on {addr}: {source}; is another node using it? pick another with --api HOST:PORT (port 0 for any)"
    )]
    Api { addr: SocketAddr, source: std::io::Error },
}

/// A started node.
#[derive(Debug)]
pub struct RunningNode {
    pub handle: NodeHandle,
    pub peer_id: String,
    pub node_id: NodeId,
    /// The address the API actually bound.
    pub api: SocketAddr,
    pub token: String,
    pub data_dir: DataDir,
    stop_tx: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    /// The event loop and the lease task (the holders of the store).
    workers: Vec<JoinHandle<()>>,
    /// The offer writer thread (it holds the store until the event loop is gone).
    writer_thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningNode {
    /// Stops the node cleanly: withdraws offers, delivers them, flushes, closes the API.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
        for w in std::mem::take(&mut self.workers) {
            let _ = w.await;
        }
        self.join_writer().await;
    }

    async fn join_writer(&mut self) {
        if let Some(t) = self.writer_thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    /// Waits until the node stops by itself (it does not, unless stopped).
    pub async fn wait(mut self) {
        let _ = (&mut self.task).await;
    }

    /// Kills the node's tasks at once, as a crash would: nothing is withdrawn or flushed
    /// beyond what was already durable. Returns once every task is gone (and the store is
    /// closed). For tests.
    pub async fn crash(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
        // The supervisor's guard aborted the workers; wait until they are dropped.
        for w in std::mem::take(&mut self.workers) {
            let _ = w.await;
        }
        self.join_writer().await;
    }
}

/// The local inventory: simulated when asked, detected otherwise.
pub fn local_gpus(
    settings: &Settings,
    seed: &[u8],
) -> Result<(Vec<DetectedGpu>, Vec<String>), inventory::SimulateError> {
    match &settings.simulate_gpus {
        Some(spec) => Ok((inventory::simulate(spec, seed)?, vec!["simulated".into()])),
        None => {
            let inv = inventory::detect();
            Ok((inv.gpus, inv.notes))
        }
    }
}

/// The price of a GPU group: `price` for all, else the per-model price, else the catalogue's
/// typical price, else $1.00.
fn price_of(settings: &Settings, model: &str) -> Price {
    if let Some(p) = settings.price {
        return p;
    }
    let norm = inventory::catalogue::normalize(model);
    if let Some((_, p)) = settings.prices.iter().find(|(m, _)| inventory::catalogue::normalize(m) == norm) {
        return *p;
    }
    inventory::lookup(model).map_or(Price(1_000_000), |e| Price(e.typical_price_micros))
}

/// Starts a node on `data_dir` (initialising it if empty) with `config`.
pub async fn start(data_dir: DataDir, config: NodeConfig) -> Result<RunningNode, NodeError> {
    let settings = Arc::new(config.resolve()?);
    if !data_dir.is_initialised() {
        let id = data_dir.init(&settings.network, false)?;
        tracing::info!(peer_id = %id, dir = %data_dir.root().display(), "initialised a new data dir");
    }
    let key = data_dir.load_key()?;
    let me = NodeId::from_bytes(key.verifying_key().to_bytes());
    let store = Store::open(&data_dir.db_path())?;
    let (gpus, notes) = local_gpus(&settings, me.as_bytes())?;
    for n in &notes {
        tracing::info!(note = %n, "GPU inventory");
    }
    // Real GPUs another node on this host already offers are left out (inventory::claim).
    let claimed = inventory::claim::claim(gpus, &settings.gpu_lock_dir, &me);
    for n in &claimed.notes {
        tracing::warn!(note = %n, "GPU locks");
    }
    let gpus = claimed.gpus;
    // Should the start fail from here on, the claims are released as on a clean stop.
    let mut gpu_claims = ClaimsUntilStarted { claims: Some(claimed.claims), store: store.clone() };
    let facts = inventory::detect_host(data_dir.root());
    let host = HostSpec {
        cpu_cores: facts.cpu_cores,
        ram_mib: facts.ram_mib,
        disk_gib: facts.disk_gib,
        region: settings.region.clone(),
    };
    let groups: Vec<OfferedGroup> = inventory::group(&gpus)
        .into_iter()
        .map(|(spec, units)| {
            let price = price_of(&settings, &spec.model);
            OfferedGroup { spec, units, price }
        })
        .collect();
    tracing::info!(
        peer_id = %me,
        gpus = gpus.len(),
        groups = groups.len(),
        source = gpus.first().map_or("none", |g| g.source.as_str()),
        "starting node"
    );
    let metrics = Arc::new(Metrics::new());
    let swarm = crate::net::build_swarm(&key, &settings)?;
    let (swarm_tx, swarm_rx) = mpsc::channel(1024);
    let (lease_tx, lease_rx) = mpsc::channel(4096);
    let (book_events, _) = tokio::sync::broadcast::channel(4096);
    let handle =
        NodeHandle { swarm: swarm_tx.clone(), lease: lease_tx.clone(), book_events: book_events.clone() };

    let listener = tokio::net::TcpListener::bind(settings.api)
        .await
        .map_err(|source| NodeError::Api { addr: settings.api, source })?;
    let api = listener.local_addr().map_err(|source| NodeError::Api { addr: settings.api, source })?;
    if !api.ip().is_loopback() {
        tracing::warn!(api = %api, "the API listens beyond loopback; anyone with the token can lease and release");
    }
    let token = data_dir.new_token()?;

    let (writer, writer_thread) = crate::store::OfferWriter::start(store.clone())?;
    let mut event_loop = EventLoop::new(EventLoopParts {
        swarm,
        me,
        settings: settings.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
        commands: swarm_rx,
        lease_tx: lease_tx.clone(),
        api_addr: api.to_string(),
        local_gpus: gpus.iter().filter(|g| !g.mig).count(),
        book_events,
        writer,
    });
    event_loop.start()?;
    let lease_task = LeaseTask::new(LeaseTaskParts {
        key,
        settings: settings.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
        groups,
        host,
        gpus,
        swarm: swarm_tx.clone(),
        commands: lease_rx,
    });
    let peer_id = crate::net::peer_id_of(&me).to_string();
    data_dir.write_api_info(&ApiInfo { api, pid: std::process::id(), peer_id: peer_id.clone() })?;

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (api_stop_tx, api_stop_rx) = oneshot::channel::<()>();
    let router = crate::api::router(handle.clone(), metrics.clone(), token.clone());
    let api_task = tokio::spawn(async move {
        let serve = axum::serve(listener, router).with_graceful_shutdown(async {
            let _ = api_stop_rx.await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "API server failed");
        }
    });
    let loop_task = tokio::spawn(event_loop.run());
    let lease_join = tokio::spawn(lease_task.run());
    let dd = data_dir.clone();
    let guard =
        AbortOnDrop(vec![api_task.abort_handle(), loop_task.abort_handle(), lease_join.abort_handle()]);
    let gpu_claims = gpu_claims.claims.take().unwrap_or_default();
    let task = tokio::spawn(async move {
        // Supervisor: waits for stop, then shuts down in order. The GPU locks go last, once
        // the offers are withdrawn (or at once, in a crash, keeping this node's id in them).
        let _guard = guard;
        let mut stop_rx = stop_rx;
        let mut touch = tokio::time::interval(GPU_LOCK_TOUCH);
        loop {
            tokio::select! {
                _ = &mut stop_rx => break,
                _ = touch.tick() => gpu_claims.touch(),
            }
        }
        tracing::info!("shutting down: withdrawing offers");
        let (tx, rx) = oneshot::channel();
        if lease_tx.send(LeaseCommand::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let (tx, rx) = oneshot::channel();
        if swarm_tx.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let _ = api_stop_tx.send(());
        let _ = api_task.await;
        let _ = store.flush().await;
        gpu_claims.release(&live_leased_gpus(&store));
        dd.remove_api_info();
        tracing::info!("stopped");
    });
    Ok(RunningNode {
        handle,
        peer_id,
        node_id: me,
        api,
        token,
        data_dir,
        stop_tx: Some(stop_tx),
        task,
        workers: vec![loop_task, lease_join],
        writer_thread: Some(writer_thread),
    })
}

/// The GPUs under a provider lease that is still live: they stay this node's when it stops,
/// since its workload may run on.
fn live_leased_gpus(store: &Store) -> HashSet<String> {
    let (leases, _) = store.provider_leases();
    leases.iter().filter(|l| l.state.is_live()).flat_map(|l| l.gpus.iter().map(|g| g.uuid.clone())).collect()
}

/// GPU claims taken while a node starts: released (as on a clean stop) if the start fails
/// before the node runs; taken out of here once it does.
struct ClaimsUntilStarted {
    claims: Option<inventory::claim::GpuClaims>,
    store: Store,
}

impl Drop for ClaimsUntilStarted {
    fn drop(&mut self) {
        if let Some(claims) = self.claims.take() {
            claims.release(&live_leased_gpus(&self.store));
        }
    }
}

/// How often a running node marks its GPU lock files as in use (cleaners of `/tmp` delete
/// files untouched for days).
const GPU_LOCK_TOUCH: std::time::Duration = std::time::Duration::from_secs(3600);

/// Aborts the node's tasks when the supervisor ends or is aborted (a crash in tests).
struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// Runs a node until `shutdown` resolves, then stops it cleanly.
pub async fn run(
    data_dir: DataDir,
    config: NodeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), NodeError> {
    crate::alloc::limit_arenas();
    let node = start(data_dir, config).await?;
    // What bursts of gossip, syncs and sled buffers freed goes back to the system.
    let trimmer = crate::alloc::spawn_trimmer(crate::alloc::TRIM_EVERY);
    tracing::info!(peer_id = %node.peer_id, api = %node.api, "node running");
    shutdown.await;
    trimmer.abort();
    node.stop().await;
    Ok(())
}

/// The source of the local inventory, for messages.
pub fn source_name(gpus: &[DetectedGpu]) -> &'static str {
    gpus.first().map_or("none", |g| match g.source {
        GpuSource::Nvml => "nvml",
        GpuSource::NvidiaSmi => "nvidia-smi",
        GpuSource::Simulated => "simulated",
    })
}
