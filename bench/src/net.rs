//! In-process gpumesh nodes for the benchmarks, and raw libp2p swarms (the baselines): plain
//! gossipsub, and plain request-response with the same codec.

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use gpumesh_node::config::{NodeConfig, Settings};
use gpumesh_node::net::codec::BytesCodec;
use gpumesh_node::{DataDir, RunningNode};
use gpumesh_protocol::SigningKey;
use libp2p::gossipsub::{self, IdentTopic};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identity, noise, tcp, yamux};
use libp2p::{identify, kad, ping};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// The gossip heartbeat both sides of every comparison use.
pub const HEARTBEAT: Duration = Duration::from_millis(200);

/// A node config for benchmarks: loopback TCP on port 0, no mDNS, heartbeat 200 ms.
pub fn node_config(network: &str, gpus: Option<&str>, bootstrap: Vec<String>) -> NodeConfig {
    let mut c = NodeConfig {
        network: network.into(),
        listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
        bootstrap,
        api: "127.0.0.1:0".into(),
        mdns: false,
        simulate_gpus: gpus.map(str::to_string),
        offer_ttl: "30m".into(),
        min_lease: "1s".into(),
        max_offers_per_provider: 100_000,
        ..NodeConfig::default()
    };
    c.tuning.gossip_heartbeat = format!("{}ms", HEARTBEAT.as_millis());
    c.tuning.sweep_interval = "1s".into();
    c.tuning.ping_interval = "30s".into();
    c.tuning.bootstrap_retry_max = "1s".into();
    c.tuning.request_timeout = "10s".into();
    c
}

/// An in-process node with its key, in a temporary data dir.
pub struct BenchNode {
    pub node: RunningNode,
    pub key: SigningKey,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl BenchNode {
    pub async fn start(config: NodeConfig) -> Result<BenchNode> {
        let dir = tempfile::tempdir()?;
        let dd = DataDir::new(dir.path().join("n"));
        let node = gpumesh_node::start(dd.clone(), config).await?;
        let key = dd.load_key()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            let s = node.handle.status().await?;
            if let Some(a) = s.listen_addrs.first() {
                break a.clone();
            }
            if Instant::now() > deadline {
                bail!("node never bound an address");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        Ok(BenchNode { node, key, addr, _dir: dir })
    }
}

/// Polls `check` every 20 ms until true or the deadline.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn keypair(i: u64) -> Result<identity::Keypair> {
    let mut seed = [7u8; 32];
    seed[..8].copy_from_slice(&i.to_le_bytes());
    Ok(identity::Keypair::ed25519_from_bytes(seed)?)
}

// ---------------------------------------------------------------------------------------
// Raw gossipsub.

enum GossipCmd {
    Dial(Multiaddr),
    Publish(Vec<u8>, oneshot::Sender<bool>),
    Peers(oneshot::Sender<usize>),
    Connected(oneshot::Sender<usize>),
}

/// A raw gossipsub swarm running in its own task.
pub struct RawGossip {
    pub addr: Multiaddr,
    cmd: mpsc::UnboundedSender<GossipCmd>,
}

/// A message arrival at raw swarm `node`.
pub struct Arrival {
    pub node: usize,
    pub id: Vec<u8>,
    pub at: Instant,
}

/// Which swarm a [`RawGossip`] runs.
#[derive(Debug, Clone, Copy)]
pub enum Flavor {
    /// Gossipsub alone, over TCP, with the node's gossip configuration
    /// (`gpumesh_node::net::gossipsub_behaviour`: heartbeat, message ids, size limits, peer
    /// scoring, messages held until the application accepts them), accepting every message
    /// as it arrives: the suite's headline baseline.
    Raw,
    /// A node's whole libp2p swarm from `gpumesh_node::net::build_swarm` (its gossipsub
    /// configuration with peer scoring and validation, identify, ping, Kademlia, three
    /// request-response protocols, TCP and QUIC), accepting every message as it arrives: no
    /// decoding, verification, book or store. What is left between it and a node is the
    /// node's own path.
    NodeSwarm,
    /// Gossipsub as in `Raw` plus the chosen ones of the node's other protocols, each built as
    /// the node builds it: a diagnostic (`swarm-parts`) that splits what the node's swarm
    /// costs over gossipsub alone by protocol.
    Parts(Parts),
}

/// Which of the node's other protocols a [`Flavor::Parts`] swarm runs beside gossipsub.
#[derive(Debug, Clone, Copy, Default)]
pub struct Parts {
    pub identify: bool,
    pub ping: bool,
    pub kad: bool,
    /// The three request-response protocols (capacity, lease, sync).
    pub request_response: bool,
}

impl Parts {
    /// Every protocol the node runs beside gossipsub.
    pub const ALL: Parts = Parts { identify: true, ping: true, kad: true, request_response: true };
}

/// Gossipsub and, switched on or off, the node's other protocols.
#[derive(libp2p::swarm::NetworkBehaviour)]
pub struct PartsBehaviour {
    gossipsub: gossipsub::Behaviour,
    identify: Toggle<identify::Behaviour>,
    ping: Toggle<ping::Behaviour>,
    kad: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
    capacity: Toggle<request_response::Behaviour<BytesCodec>>,
    lease: Toggle<request_response::Behaviour<BytesCodec>>,
    sync: Toggle<request_response::Behaviour<BytesCodec>>,
}

impl PartsBehaviour {
    fn new(parts: Parts, key: &identity::Keypair, settings: &Settings) -> Result<PartsBehaviour> {
        use gpumesh_node::net::{
            identify_behaviour, kad_behaviour, kad_config, ping_behaviour, request_responses,
        };
        let [capacity, lease, sync] = match parts.request_response.then(|| request_responses(settings)) {
            Some(rr) => rr.map(Some),
            None => [None, None, None],
        };
        Ok(PartsBehaviour {
            gossipsub: gpumesh_node::net::gossipsub_behaviour(settings)?,
            identify: Toggle::from(parts.identify.then(|| identify_behaviour(key.public()))),
            ping: Toggle::from(parts.ping.then(|| ping_behaviour(settings))),
            kad: Toggle::from(parts.kad.then(|| {
                // Peers enter the routing table only when added by hand (never, here): left
                // to itself, Kademlia learns every peer from identify and dials them all,
                // and the swarm would no longer hold the topology it is given.
                let mut config = kad_config();
                config.set_kbucket_inserts(kad::BucketInserts::Manual);
                kad_behaviour(key.public().to_peer_id(), config)
            })),
            capacity: Toggle::from(capacity),
            lease: Toggle::from(lease),
            sync: Toggle::from(sync),
        })
    }
}

impl RawGossip {
    /// Starts swarm number `ix` of `flavor`, subscribed to the offers topic of `network`;
    /// arrivals go to `arrivals`.
    pub async fn start(
        ix: usize,
        flavor: Flavor,
        network: &str,
        arrivals: mpsc::UnboundedSender<Arrival>,
    ) -> Result<RawGossip> {
        let topic = gpumesh_protocol::wire::offers_topic(network);
        let settings = node_config(network, None, vec![]).resolve()?;
        match flavor {
            Flavor::Raw => {
                let gossip = gpumesh_node::net::gossipsub_behaviour(&settings)?;
                let swarm = tcp_swarm(keypair(1_000_000 + ix as u64)?, gossip)?;
                drive(swarm, ix, &topic, arrivals, |b| b, Some).await
            }
            Flavor::NodeSwarm => {
                let mut seed = [9u8; 32];
                seed[..8].copy_from_slice(&(ix as u64).to_le_bytes());
                let swarm = gpumesh_node::net::build_swarm(&SigningKey::from_bytes(&seed), &settings)?;
                drive(
                    swarm,
                    ix,
                    &topic,
                    arrivals,
                    |b| &mut b.gossipsub,
                    |e| match e {
                        gpumesh_node::net::BehaviourEvent::Gossipsub(e) => Some(e),
                        _ => None,
                    },
                )
                .await
            }
            Flavor::Parts(parts) => {
                let key = keypair(3_000_000 + ix as u64)?;
                let behaviour = PartsBehaviour::new(parts, &key, &settings)?;
                let swarm = tcp_swarm(key, behaviour)?;
                drive(
                    swarm,
                    ix,
                    &topic,
                    arrivals,
                    |b| &mut b.gossipsub,
                    |e| match e {
                        PartsBehaviourEvent::Gossipsub(e) => Some(e),
                        _ => None,
                    },
                )
                .await
            }
        }
    }

    pub fn dial(&self, addr: &Multiaddr) {
        let _ = self.cmd.send(GossipCmd::Dial(addr.clone()));
    }

    pub async fn publish(&self, data: Vec<u8>) -> bool {
        let (tx, rx) = oneshot::channel();
        let _ = self.cmd.send(GossipCmd::Publish(data, tx));
        rx.await.unwrap_or(false)
    }

    pub async fn topic_peers(&self) -> usize {
        let (tx, rx) = oneshot::channel();
        let _ = self.cmd.send(GossipCmd::Peers(tx));
        rx.await.unwrap_or(0)
    }

    /// Peers this swarm has a connection with.
    pub async fn connected(&self) -> usize {
        let (tx, rx) = oneshot::channel();
        let _ = self.cmd.send(GossipCmd::Connected(tx));
        rx.await.unwrap_or(0)
    }
}

/// Runs `swarm` in its own task: listens on loopback, subscribes to `topic`, reports every
/// gossip message's arrival (accepting it at once: both flavors run the node's gossipsub,
/// which holds messages until the application accepts them) and obeys [`GossipCmd`]s.
async fn drive<B>(
    mut swarm: Swarm<B>,
    ix: usize,
    topic: &str,
    arrivals: mpsc::UnboundedSender<Arrival>,
    gossipsub: fn(&mut B) -> &mut gossipsub::Behaviour,
    event: fn(B::ToSwarm) -> Option<gossipsub::Event>,
) -> Result<RawGossip>
where
    B: libp2p::swarm::NetworkBehaviour + Send + 'static,
    B::ToSwarm: Send,
{
    let topic = IdentTopic::new(topic);
    gossipsub(swarm.behaviour_mut()).subscribe(&topic)?;
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address;
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<GossipCmd>();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                ev = swarm.select_next_some() => {
                    let message = match ev {
                        SwarmEvent::Behaviour(e) => event(e),
                        _ => None,
                    };
                    if let Some(gossipsub::Event::Message { message_id, propagation_source, .. }) = message {
                        gossipsub(swarm.behaviour_mut()).report_message_validation_result(
                            &message_id,
                            &propagation_source,
                            gossipsub::MessageAcceptance::Accept,
                        );
                        let _ = arrivals.send(Arrival { node: ix, id: message_id.0, at: Instant::now() });
                    }
                }
                cmd = rx.recv() => match cmd {
                    Some(GossipCmd::Dial(a)) => { let _ = swarm.dial(a); }
                    Some(GossipCmd::Publish(data, done)) => {
                        let ok = gossipsub(swarm.behaviour_mut()).publish(topic.clone(), data).is_ok();
                        let _ = done.send(ok);
                    }
                    Some(GossipCmd::Connected(reply)) => {
                        let _ = reply.send(swarm.connected_peers().count());
                    }
                    Some(GossipCmd::Peers(reply)) => {
                        let peers = gossipsub(swarm.behaviour_mut()).all_peers().filter(|(_, t)| !t.is_empty()).count();
                        let _ = reply.send(peers);
                    }
                    None => return,
                },
            }
        }
    });
    Ok(RawGossip { addr, cmd: tx })
}

// ---------------------------------------------------------------------------------------
// Raw request-response.

/// What a raw responder does before answering.
#[derive(Clone)]
pub enum Responder {
    /// Answer `size` bytes at once.
    Echo { size: usize },
    /// Write the request to sled and flush, then answer `size` bytes.
    FlushThenEcho { size: usize, db: sled::Db },
}

/// Starts a raw request-response server on `protocol`; returns its peer id and address.
pub async fn rr_server(ix: u64, protocol: &'static str, responder: Responder) -> Result<(PeerId, Multiaddr)> {
    let mut swarm = rr_swarm(ix, protocol)?;
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address;
        }
    };
    let peer = *swarm.local_peer_id();
    tokio::spawn(async move {
        let mut n: u64 = 0;
        while let Some(ev) = swarm.next().await {
            if let SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Request { request, channel, .. },
                ..
            }) = ev
            {
                let size = match &responder {
                    Responder::Echo { size } => *size,
                    Responder::FlushThenEcho { size, db } => {
                        n += 1;
                        let _ = db.insert(n.to_be_bytes(), request);
                        let _ = db.flush_async().await;
                        *size
                    }
                };
                let _ = swarm.behaviour_mut().send_response(channel, vec![0x5a; size]);
            }
        }
    });
    Ok((peer, addr))
}

/// One request for the client task: to whom, where, what, and where its outcome goes.
type RrRequest = (PeerId, Multiaddr, Vec<u8>, oneshot::Sender<Result<(), String>>);

/// A raw request-response client driven by commands.
pub struct RrClient {
    cmd: mpsc::UnboundedSender<RrRequest>,
}

impl RrClient {
    pub fn start(ix: u64, protocol: &'static str) -> Result<RrClient> {
        let mut swarm = rr_swarm(ix, protocol)?;
        let (tx, mut rx) = mpsc::unbounded_channel::<RrRequest>();
        tokio::spawn(async move {
            let mut pending: std::collections::HashMap<
                request_response::OutboundRequestId,
                oneshot::Sender<Result<(), String>>,
            > = Default::default();
            loop {
                tokio::select! {
                    ev = swarm.select_next_some() => match ev {
                        SwarmEvent::Behaviour(request_response::Event::Message {
                            message: request_response::Message::Response { request_id, .. }, ..
                        }) => {
                            if let Some(reply) = pending.remove(&request_id) {
                                let _ = reply.send(Ok(()));
                            }
                        }
                        SwarmEvent::Behaviour(request_response::Event::OutboundFailure { request_id, error, .. }) => {
                            if let Some(reply) = pending.remove(&request_id) {
                                let _ = reply.send(Err(error.to_string()));
                            }
                        }
                        _ => {}
                    },
                    cmd = rx.recv() => match cmd {
                        Some((peer, addr, data, reply)) => {
                            let id = swarm.behaviour_mut().send_request_with_addresses(&peer, data, vec![addr]);
                            pending.insert(id, reply);
                        }
                        None => return,
                    },
                }
            }
        });
        Ok(RrClient { cmd: tx })
    }

    /// Sends one request; the round trip as the caller sees it, from handing the request to
    /// the swarm's task until the answer is back (as a node's API call is timed).
    pub async fn request(&self, peer: PeerId, addr: &Multiaddr, data: Vec<u8>) -> Result<Duration> {
        let t0 = Instant::now();
        let (tx, rx) = oneshot::channel();
        self.cmd.send((peer, addr.clone(), data, tx)).ok().context("client gone")?;
        rx.await.context("client gone")?.map_err(|e| anyhow::anyhow!(e))?;
        Ok(t0.elapsed())
    }
}

fn rr_swarm(ix: u64, protocol: &'static str) -> Result<Swarm<request_response::Behaviour<BytesCodec>>> {
    let rr = request_response::Behaviour::with_codec(
        BytesCodec { max_request: 1 << 20, max_response: 1 << 20 },
        [(StreamProtocol::new(protocol), ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
    );
    tcp_swarm(keypair(2_000_000 + ix)?, rr)
}

/// A swarm of `behaviour` over TCP with noise and yamux (the node's TCP stack, no QUIC or
/// DNS) and its swarm settings (`gpumesh_node::net::swarm_config`), as every baseline runs it.
fn tcp_swarm<B: libp2p::swarm::NetworkBehaviour>(key: identity::Keypair, behaviour: B) -> Result<Swarm<B>> {
    Ok(libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|_| behaviour)?
        .with_swarm_config(|c| gpumesh_node::net::swarm_config(c, Duration::from_secs(300)))
        .build())
}

/// CPU time this process has used, in clock ticks (utime + stime of /proc/self/stat).
pub fn cpu_ticks() -> Option<u64> {
    stat_ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// utime + stime of a `/proc/.../stat` line, in clock ticks.
fn stat_ticks(stat: &str) -> Option<u64> {
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Waits until this process is nearly idle (under 30 % of one core over half a second), at
/// most `max`: a network that has just formed is still dialing, identifying and running
/// Kademlia bootstraps for a few seconds on 2 cores, and figures taken then measure that
/// instead of the steady state. Returns how long it took and whether it settled.
pub async fn settle(max: Duration) -> (Duration, bool) {
    let started = std::time::Instant::now();
    let window = Duration::from_millis(500);
    let Some(mut before) = cpu_ticks() else { return (Duration::ZERO, false) };
    while started.elapsed() < max {
        tokio::time::sleep(window).await;
        let Some(now) = cpu_ticks() else { break };
        // 100 ticks per second on Linux: 30 % of one core over 0.5 s is 15 ticks.
        if now - before <= 15 {
            return (started.elapsed(), true);
        }
        before = now;
    }
    (started.elapsed(), false)
}

/// The process's CPU use over the next `window`, in per cent of one core, in all and by
/// thread name: what a phase's nodes cost while nothing is published (timers, heartbeats,
/// background threads).
pub async fn idle_cpu(window: Duration) -> (Option<f64>, BTreeMap<String, f64>) {
    let (before, threads_before) = (cpu_ticks(), thread_ticks());
    tokio::time::sleep(window).await;
    // 100 ticks per second on Linux.
    let pct = |ticks: u64| ticks as f64 / window.as_secs_f64();
    let total = before.and_then(|b| Some(pct(cpu_ticks()?.checked_sub(b)?)));
    let mut by_thread = BTreeMap::new();
    for (name, ticks) in thread_ticks() {
        let used = ticks.saturating_sub(threads_before.get(&name).copied().unwrap_or(0));
        if used > 0 {
            by_thread.insert(name, pct(used));
        }
    }
    (total, by_thread)
}

/// CPU ticks of this process's threads, summed by name without a trailing number (the
/// threads of one pool count together). Threads that ended are not counted.
fn thread_ticks() -> BTreeMap<String, u64> {
    let mut by_name = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return by_name };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let (Some(open), Some(close), Some(ticks)) = (stat.find('('), stat.rfind(')'), stat_ticks(&stat))
        else {
            continue;
        };
        let name =
            stat[open + 1..close].trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '_');
        *by_name.entry(name.to_string()).or_insert(0) += ticks;
    }
    by_name
}
