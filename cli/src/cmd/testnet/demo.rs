//! `gpumesh testnet --demo`: a scripted renter session on the ready network, each step timed.

use crate::client::{Client, plain};
use anyhow::{Result, anyhow, bail};
use gpumesh_node::DataDir;
use gpumesh_node::api::routes::{LeaseBody, SearchParams};
use gpumesh_node::views::{CapacityReport, LeaseView, OfferView, ReceiptView, StatusView};
use std::future::Future;
use std::time::Instant;

const QUERY: &str = "vram>=24";

async fn step<T, F: Future<Output = Result<T>>>(n: usize, what: &str, f: F) -> Result<T> {
    let t = Instant::now();
    let r = f.await;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    match &r {
        Ok(_) => println!("  [{n}] {what:<34} ok   {ms:>8.1} ms"),
        Err(e) => println!("  [{n}] {what:<34} FAIL {ms:>8.1} ms: {e:#}"),
    }
    r
}

/// Runs the session from the node of `dir`; true when every step worked.
pub async fn run(dir: &DataDir) -> bool {
    println!("\ndemo: a renter session from {}", dir.root().display());
    match session(dir).await {
        Ok(()) => {
            println!("demo: every step worked");
            true
        }
        Err(e) => {
            println!("demo: failed: {e:#}");
            false
        }
    }
}

async fn session(dir: &DataDir) -> Result<()> {
    let c = Client::new(dir, None, None)?;
    let me: StatusView = plain(c.get("/v1/status").await)?;
    let search =
        SearchParams { q: QUERY.into(), sort: Some("price".into()), limit: Some(5), ..Default::default() };
    let offers: Vec<OfferView> = step(1, &format!("search `{QUERY}` by price"), async {
        let o: Vec<OfferView> = plain(c.get_query("/v1/offers", &search).await)?;
        if o.is_empty() {
            bail!("no offer matches");
        }
        Ok(o)
    })
    .await?;
    println!(
        "      cheapest: {} × {} at {} USD/GPU-h",
        offers[0].gpu_count, offers[0].gpu_model, offers[0].price
    );

    let live = SearchParams {
        q: QUERY.into(),
        sort: Some("score".into()),
        timeout_ms: Some(3000),
        ..Default::default()
    };
    let report: CapacityReport =
        step(2, "live capacity query", async { plain(c.post("/v1/query", &live).await) }).await?;
    println!(
        "      {} providers answered, {} unreachable, {} live offers",
        report.answered.len(),
        report.unreachable.len(),
        report.offers.len()
    );

    let pick = step(3, "pick the best by score", async {
        report
            .offers
            .iter()
            .find(|o| o.provider != me.peer_id && o.gpu_count >= 1)
            .cloned()
            .ok_or_else(|| anyhow!("no other provider has a free GPU"))
    })
    .await?;
    println!(
        "      {} {} at {} USD/GPU-h, {} ms away (score {:.3})",
        pick.offer_id,
        pick.gpu_model,
        pick.price,
        pick.latency_ms.map_or("?".into(), |l| format!("{l:.1}")),
        pick.score.unwrap_or(0.0)
    );

    let body =
        LeaseBody { offer: pick.offer_id.clone(), gpus: 1, duration_s: 300, max_price: None, ssh_key: None };
    let lease: LeaseView =
        step(4, "lease 1 GPU for 5 minutes", async { plain(c.start_lease(&body).await) }).await?;
    println!("      lease {} on {} ({})", lease.lease_id, lease.gpu_uuids.join(","), lease.state);
    println!("      access details: {}", lease.access);

    let released: LeaseView = step(5, "release it", async {
        plain(c.post(&format!("/v1/leases/{}/release", lease.lease_id), &serde_json::json!({})).await)
    })
    .await?;
    println!("      state: {}", released.state);

    let receipt: ReceiptView = step(6, "fetch the signed receipt", async {
        let all: Vec<ReceiptView> = plain(c.get("/v1/receipts").await)?;
        all.into_iter()
            .find(|r| r.lease_id == lease.lease_id)
            .ok_or_else(|| anyhow!("no receipt for the lease"))
    })
    .await?;
    println!(
        "      {} GPU(s) from {} to {}: {} USD ({})",
        receipt.gpus,
        receipt.start,
        receipt.end,
        gpumesh_protocol::Price(receipt.amount_micros),
        receipt.ended_by
    );
    Ok(())
}
