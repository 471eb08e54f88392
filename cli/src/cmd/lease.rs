//! `gpumesh lease`, `leases`, `release`, `receipts`.

use crate::cli::{LeaseArgs, SearchArgs};
use crate::client::{CallError, Client, plain};
use crate::table::Table;
use anyhow::{Context, Result, anyhow, bail};
use gpumesh_node::api::routes::{LeaseBody, SearchParams};
use gpumesh_node::views::{CapacityReport, LeaseView, ReceiptView};

/// Lease reject codes from the API (the provider said no), as opposed to local errors.
fn is_reject(code: &str) -> bool {
    code.parse::<gpumesh_protocol::lease::messages::RejectReason>().is_ok()
}

pub async fn lease(c: &Client, a: LeaseArgs) -> Result<i32> {
    if a.args.first().map(String::as_str) == Some("show") {
        let [_, id] = a.args.as_slice() else {
            bail!("usage: gpumesh lease show LEASE_ID");
        };
        let l: LeaseView = plain(c.get(&format!("/v1/leases/{id}")).await)?;
        if a.json {
            super::print_json(&l)?;
        } else {
            print_lease(&l);
        }
        return Ok(0);
    }
    let gpus = a.gpus.ok_or_else(|| anyhow!("--gpus N is required (how many GPUs to lease)"))?;
    let duration = a.duration.ok_or_else(|| anyhow!("--duration is required, e.g. --duration 2h"))?;
    if gpus == 0 {
        bail!("--gpus must be at least 1");
    }
    let ssh_key = match &a.ssh_key {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading the SSH key {}", p.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let body = |offer: String| LeaseBody {
        offer,
        gpus,
        duration_s: duration.as_secs().max(1),
        max_price: a.max_price.clone(),
        ssh_key: ssh_key.clone(),
    };
    if !a.best {
        let [offer] = a.args.as_slice() else {
            bail!("give exactly one OFFER_ID (or a unique prefix), or use --best with query terms");
        };
        return match c.start_lease::<LeaseView, _>(&body(offer.clone())).await {
            Ok(l) => {
                show_new_lease(&l, a.json)?;
                Ok(0)
            }
            Err(CallError::Api(e)) if is_reject(&e.code) => {
                if a.json {
                    super::print_json(&e)?;
                } else {
                    eprintln!("lease rejected: {}", e.error);
                }
                Ok(2)
            }
            Err(e) => Err(anyhow!("{e}")),
        };
    }
    // --best: search, live query, pick, lease; next candidate on a reject.
    let search = SearchArgs {
        query: a.args.clone(),
        sort: a.sort.clone(),
        limit: Some(20),
        latency_weight: None,
        probe: false,
        json: a.json,
    };
    let mut params: SearchParams = super::market::search_params(&search)?;
    params.q = format!("{} count>={gpus}", params.q).trim().to_string();
    params.timeout_ms = Some(3000);
    let report: CapacityReport = plain(c.post("/v1/query", &params).await)?;
    let candidates: Vec<_> = report
        .offers
        .iter()
        .filter(|o| o.min_duration_s <= duration.as_secs() && duration.as_secs() <= o.max_duration_s)
        .collect();
    if candidates.is_empty() {
        bail!(
            "no live offer has {gpus} free GPUs for {} matching `{}` ({} providers answered)",
            humantime::format_duration(duration),
            params.q,
            report.answered.len()
        );
    }
    let mut last = String::new();
    for o in candidates {
        match c.start_lease::<LeaseView, _>(&body(o.offer_id.clone())).await {
            Ok(l) => {
                show_new_lease(&l, a.json)?;
                return Ok(0);
            }
            Err(CallError::Api(e)) if is_reject(&e.code) || e.code == "failed" => {
                eprintln!("offer {} rejected: {}; trying the next", o.offer_id, e.error);
                last = e.error;
            }
            Err(e) => return Err(anyhow!("{e}")),
        }
    }
    eprintln!("every candidate rejected the lease; last reason: {last}");
    Ok(2)
}

fn show_new_lease(l: &LeaseView, json: bool) -> Result<()> {
    if json {
        return super::print_json(l);
    }
    println!("leased {} GPU(s) from {}", l.gpus, l.provider);
    print_lease(l);
    Ok(())
}

fn print_lease(l: &LeaseView) {
    println!("lease     {}", l.lease_id);
    println!("role      {}", l.role);
    println!("state     {}", l.state);
    println!("provider  {}", l.provider);
    println!("renter    {}", l.renter);
    println!("offer     {}", l.offer_id);
    println!("gpus      {} {}", l.gpus, l.gpu_uuids.join(","));
    println!("price     {} USD/GPU-h", gpumesh_protocol::Price((l.price * 1e6).round() as u64));
    if let (Some(s), Some(e)) = (&l.start, &l.end) {
        println!("time      {s} .. {e}");
    }
    if l.access.as_object().is_some_and(|o| !o.is_empty()) {
        println!("access    {}", l.access);
    }
    if let Some(r) = &l.reason {
        println!("reason    {r}");
    }
}

pub async fn leases(c: &Client, json: bool) -> Result<i32> {
    let leases: Vec<LeaseView> = plain(c.get("/v1/leases").await)?;
    if json {
        super::print_json(&leases)?;
        return Ok(0);
    }
    if leases.is_empty() {
        println!("no leases");
        return Ok(0);
    }
    let mut t = Table::new(&["LEASE", "ROLE", "STATE", ">GPUS", ">USD/GPU-H", "END", "PEER"]);
    for l in &leases {
        let peer = if l.role == "renter" { &l.provider } else { &l.renter };
        t.row(vec![
            l.lease_id.clone(),
            l.role.clone(),
            l.state.clone(),
            l.gpus.to_string(),
            gpumesh_protocol::Price((l.price * 1e6).round() as u64).to_string(),
            l.end.clone().unwrap_or_else(|| "-".into()),
            peer.clone(),
        ]);
    }
    print!("{}", t.render());
    Ok(0)
}

pub async fn release(c: &Client, id: &str, json: bool) -> Result<i32> {
    let l: LeaseView = plain(c.post(&format!("/v1/leases/{id}/release"), &serde_json::json!({})).await)?;
    if json {
        super::print_json(&l)?;
    } else {
        println!("released {}", l.lease_id);
        print_lease(&l);
    }
    Ok(0)
}

pub async fn receipts(c: &Client, json: bool) -> Result<i32> {
    let rs: Vec<ReceiptView> = plain(c.get("/v1/receipts").await)?;
    if json {
        super::print_json(&rs)?;
        return Ok(0);
    }
    if rs.is_empty() {
        println!("no receipts");
        return Ok(0);
    }
    let mut t = Table::new(&["LEASE", ">GPUS", "START", "END", ">USD", "ENDED_BY", "PROVIDER"]);
    for r in &rs {
        t.row(vec![
            r.lease_id.clone(),
            r.gpus.to_string(),
            r.start.clone(),
            r.end.clone(),
            gpumesh_protocol::Price(r.amount_micros).to_string(),
            r.ended_by.clone(),
            r.provider.clone(),
        ]);
    }
    print!("{}", t.render());
    Ok(0)
}
