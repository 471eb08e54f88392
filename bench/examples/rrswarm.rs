//! Where a lease's request leg spends its time: a request-response echo of a lease's sizes
//! (339-byte request, 417-byte answer) between two swarms, once with request-response as the
//! only behaviour (the lease suite's baseline) and once with a node's whole behaviour set
//! (`gpumesh_node::net::build_swarm`: gossipsub, identify, ping, Kademlia, three
//! request-response protocols), both driven by a bare loop, no node around them. The gap
//! between the two is what the extra behaviours cost a round trip; the gap between the second
//! and the lease suite's request and reply legs is what the node's own tasks add.
//! `cargo run --release -p gpumesh-bench --example rrswarm [ROUND_TRIPS]`

use futures::StreamExt;
use gpumesh_node::net::codec::BytesCodec;
use libp2p::request_response::{self, Event, Message, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, Swarm, SwarmEvent};
use libp2p::{Multiaddr, StreamProtocol, identity, noise, tcp, yamux};
use std::time::{Duration, Instant};

/// The request-response events a swarm's event carries, if any.
type RrEvent = Option<Event<Vec<u8>, Vec<u8>>>;

const REQUEST: usize = 339;
const ANSWER: usize = 417;

fn raw(seed: u8) -> anyhow::Result<Swarm<request_response::Behaviour<BytesCodec>>> {
    let key = identity::Keypair::ed25519_from_bytes([seed; 32])?;
    Ok(libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                BytesCodec { max_request: 1 << 20, max_response: 1 << 20 },
                [(StreamProtocol::new(gpumesh_protocol::wire::LEASE_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
            )
        })?
        .with_swarm_config(|c| gpumesh_node::net::swarm_config(c, Duration::from_secs(300)))
        .build())
}

fn full(seed: u8) -> anyhow::Result<Swarm<gpumesh_node::net::Behaviour>> {
    let mut config = gpumesh_node::config::NodeConfig { mdns: false, ..Default::default() };
    config.network = "rrswarm".into();
    let settings = config.resolve()?;
    Ok(gpumesh_node::net::build_swarm(&gpumesh_protocol::SigningKey::from_bytes(&[seed; 32]), &settings)?)
}

/// Runs `n` round trips from `client` to `server` over one connection and returns their
/// durations. `rr` picks the request-response behaviour out of a swarm's behaviour.
async fn echo<B: NetworkBehaviour + Send>(
    mut server: Swarm<B>,
    mut client: Swarm<B>,
    rr: fn(&mut B) -> &mut request_response::Behaviour<BytesCodec>,
    event: fn(SwarmEvent<B::ToSwarm>) -> RrEvent,
    n: usize,
) -> anyhow::Result<Vec<Duration>>
where
    B::ToSwarm: Send,
{
    server.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let addr: Multiaddr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
            break address;
        }
    };
    let peer = *server.local_peer_id();
    tokio::spawn(async move {
        loop {
            let ev = server.select_next_some().await;
            if let Some(Event::Message { message: Message::Request { channel, .. }, .. }) = event(ev) {
                let _ = rr(server.behaviour_mut()).send_response(channel, vec![0x5a; ANSWER]);
            }
        }
    });
    client.dial(addr)?;
    while !matches!(client.select_next_some().await, SwarmEvent::ConnectionEstablished { .. }) {}
    let mut times = Vec::with_capacity(n);
    // One unmeasured round trip first: it negotiates the protocol on the new connection.
    for i in 0..=n {
        let t0 = Instant::now();
        rr(client.behaviour_mut()).send_request(&peer, vec![1; REQUEST]);
        loop {
            match event(client.select_next_some().await) {
                Some(Event::Message { message: Message::Response { .. }, .. }) => break,
                Some(Event::OutboundFailure { error, .. }) => anyhow::bail!("request failed: {error}"),
                _ => {}
            }
        }
        if i > 0 {
            times.push(t0.elapsed());
        }
    }
    Ok(times)
}

fn summary(name: &str, mut t: Vec<Duration>) {
    t.sort();
    let ms = |q: f64| t[((t.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    println!("{name:<34} p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms", ms(0.5), ms(0.9), ms(0.99));
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = match std::env::args().nth(1) {
        Some(a) => a.parse().map_err(|_| anyhow::anyhow!("ROUND_TRIPS must be a whole number, not `{a}`"))?,
        None => 500,
    };
    anyhow::ensure!(n > 0, "ROUND_TRIPS must be at least 1");
    for round in 0..2 {
        let r = echo(
            raw(1 + round)?,
            raw(11 + round)?,
            |b| b,
            |e| match e {
                SwarmEvent::Behaviour(e) => Some(e),
                _ => None,
            },
            n,
        )
        .await?;
        summary("request-response only", r);
        let f = echo(
            full(21 + round)?,
            full(31 + round)?,
            |b| &mut b.lease,
            |e| match e {
                SwarmEvent::Behaviour(gpumesh_node::net::BehaviourEvent::Lease(e)) => Some(e),
                _ => None,
            },
            n,
        )
        .await?;
        summary("a node's whole behaviour set", f);
    }
    Ok(())
}
