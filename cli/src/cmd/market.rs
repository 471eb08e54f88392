//! `gpumesh status`, `peers`, `offers`, `query`, `price`.

use crate::cli::SearchArgs;
use crate::client::{CallError, Client, plain};
use crate::table::Table;
use anyhow::{Result, anyhow};
use gpumesh_node::api::routes::{BlockResult, PriceBody, PriceResult, ProbeResult, SearchParams};
use gpumesh_node::views::{CapacityReport, OfferView, PeerView, StatusView};
use std::time::Duration;

pub async fn status(c: &Client, json: bool) -> Result<i32> {
    let s: StatusView = plain(c.get("/v1/status").await)?;
    if json {
        super::print_json(&s)?;
        return Ok(0);
    }
    println!("peer id     {}", s.peer_id);
    println!("network     {}", s.network);
    println!("api         {}", s.api);
    println!("peers       {}", s.peers);
    println!("offers      {} from {} providers", s.offers_known, s.providers_known);
    println!("local gpus  {}", s.local_gpus);
    println!("uptime      {}", humantime::format_duration(Duration::from_secs(s.uptime_s)));
    println!("listening");
    for a in &s.listen_addrs {
        println!("  {a}");
    }
    Ok(0)
}

pub async fn peers(c: &Client, json: bool) -> Result<i32> {
    let peers: Vec<PeerView> = plain(c.get("/v1/peers").await)?;
    if json {
        super::print_json(&peers)?;
        return Ok(0);
    }
    if peers.is_empty() {
        println!("no connected peers");
        return Ok(0);
    }
    let mut t = Table::new(&["PEER", ">RTT_MS", "AGENT", "ADDRESS"]);
    for p in &peers {
        t.row(vec![
            p.peer_id.clone(),
            p.rtt_ms.map(|r| format!("{r:.1}")).unwrap_or_else(|| "-".into()),
            p.agent.clone().unwrap_or_default(),
            p.addrs.first().cloned().unwrap_or_default(),
        ]);
    }
    print!("{}", t.render());
    Ok(0)
}

pub fn search_params(s: &SearchArgs) -> Result<SearchParams> {
    // Check sort and query here too, so mistakes are reported before any network call.
    s.sort.parse::<gpumesh_protocol::rank::SortKey>().map_err(|e| anyhow!("--sort: {e}"))?;
    let query = gpumesh_protocol::query::Query::parse_args(&s.query).map_err(|e| anyhow!("{e}"))?;
    Ok(SearchParams {
        q: query.to_string(),
        sort: Some(s.sort.clone()),
        limit: s.limit,
        latency_weight: s.latency_weight,
        timeout_ms: None,
    })
}

/// The offers table.
pub fn offers_table(offers: &[OfferView]) -> String {
    let mut t = Table::new(&[
        "OFFER",
        "GPU",
        ">FREE",
        ">VRAM_GIB",
        ">USD/GPU-H",
        "REGION",
        ">LATENCY_MS",
        "PROVIDER",
    ]);
    for o in offers {
        t.row(vec![
            o.offer_id.clone(),
            o.gpu_model.clone(),
            format!("{}/{}", o.gpu_count, o.gpu_total),
            format!("{}", (o.vram_mib as u64 + 512) / 1024),
            gpumesh_protocol::Price(o.price_micros).to_string(),
            o.region.clone(),
            o.latency_ms.map(|l| format!("{l:.1}")).unwrap_or_else(|| "-".into()),
            o.provider.clone(),
        ]);
    }
    t.render()
}

pub async fn offers(c: &Client, s: &SearchArgs) -> Result<i32> {
    let params = search_params(s)?;
    if s.probe {
        let _: ProbeResult =
            plain(c.post("/v1/probe", &SearchParams { limit: Some(8), ..params.clone() }).await)?;
    }
    let offers: Vec<OfferView> = match c.get_query("/v1/offers", &params).await {
        Ok(o) => o,
        Err(CallError::Api(e)) => return Err(anyhow!(e.error)),
        Err(CallError::Other(e)) => return Err(e),
    };
    if s.json {
        super::print_json(&offers)?;
        return Ok(0);
    }
    if offers.is_empty() {
        println!("no offers match");
        return Ok(0);
    }
    print!("{}", offers_table(&offers));
    Ok(0)
}

pub async fn query(c: &Client, s: &SearchArgs, timeout: Duration) -> Result<i32> {
    let mut params = search_params(s)?;
    params.timeout_ms = Some(timeout.as_millis() as u64);
    let r: CapacityReport = plain(c.post("/v1/query", &params).await)?;
    if s.json {
        super::print_json(&r)?;
        return Ok(0);
    }
    println!(
        "asked {} peers: {} answered, {} unreachable, in {:.0} ms",
        r.asked,
        r.answered.len(),
        r.unreachable.len(),
        r.elapsed_ms
    );
    if !r.answered.is_empty() {
        let mut t = Table::new(&["ANSWERED", ">RTT_MS", ">MATCHES"]);
        for a in &r.answered {
            t.row(vec![a.peer_id.clone(), format!("{:.1}", a.rtt_ms), a.offers.to_string()]);
        }
        print!("{}", t.render());
    }
    if !r.unreachable.is_empty() {
        let mut t = Table::new(&["UNREACHABLE", "ERROR"]);
        for u in &r.unreachable {
            t.row(vec![u.peer_id.clone(), u.error.clone()]);
        }
        print!("{}", t.render());
    }
    if r.offers.is_empty() {
        println!("no live offers match");
    } else {
        print!("{}", offers_table(&r.offers));
    }
    Ok(0)
}

pub async fn price(c: &Client, usd: String, model: Option<String>, json: bool) -> Result<i32> {
    let r: PriceResult = plain(c.post("/v1/price", &PriceBody { price: usd.clone(), model }).await)?;
    if json {
        super::print_json(&r)?;
    } else {
        println!("{} offer(s) now at {usd} USD/GPU-h; re-advertised", r.groups);
    }
    Ok(0)
}

pub async fn block(c: &Client, action: crate::cli::PeersAction, json: bool) -> Result<i32> {
    let (peer, verb) = match &action {
        crate::cli::PeersAction::Block { peer_id } => (peer_id, "block"),
        crate::cli::PeersAction::Unblock { peer_id } => (peer_id, "unblock"),
    };
    let r: BlockResult = plain(c.post(&format!("/v1/peers/{peer}/{verb}"), &serde_json::json!({})).await)?;
    if json {
        super::print_json(&r)?;
    } else {
        let state = if r.blocked { "blocked" } else { "not blocked" };
        let note = if r.changed { "" } else { " (already)" };
        println!("{} is {state}{note}", r.peer_id);
    }
    Ok(0)
}
