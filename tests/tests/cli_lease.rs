//! The renter's CLI against node processes: `offers --probe` measures latency, `lease --best`
//! picks by price and moves to the next candidate when one rejects, `release` and `receipts`.

use anyhow::Result;
use gpumesh_tests::{Proc, gpumesh, poll};
use serde_json::Value;
use std::time::Duration;

fn json(dir: &std::path::Path, args: &[&str]) -> Option<Value> {
    match gpumesh(dir, args) {
        Ok((0, out, _)) => serde_json::from_str(&out).ok(),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_then_lease_best_skips_a_provider_that_rejects() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (r_dir, cheap_dir, dear_dir) =
        (tmp.path().join("r"), tmp.path().join("cheap"), tmp.path().join("dear"));
    let (code, renter_id, _) = gpumesh(&r_dir, &["init", "--network", "t-best"])?;
    assert_eq!(code, 0);
    // The cheaper provider refuses this renter.
    std::fs::create_dir_all(&cheap_dir)?;
    std::fs::write(cheap_dir.join("gpumesh.toml"), format!("[policy]\ndeny = [\"{}\"]\n", renter_id.trim()))?;

    let common = ["--network", "t-best", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"];
    let renter = Proc::node(&r_dir, &common)?;
    let boot = renter.ready().await?.listen_addrs[0].clone();
    let mut cheap_args = common.to_vec();
    cheap_args.extend(["--simulate-gpus", "H100-SXM-80GB:1", "--price", "1.50", "--bootstrap", &boot]);
    let cheap = Proc::node(&cheap_dir, &cheap_args)?;
    let mut dear_args = common.to_vec();
    dear_args.extend(["--simulate-gpus", "H100-SXM-80GB:1", "--price", "2.50", "--bootstrap", &boot]);
    let dear = Proc::node(&dear_dir, &dear_args)?;
    let dear_id = dear.ready().await?.peer_id;
    cheap.ready().await?;

    // Both offers known; --probe makes sure each has a measured latency.
    let offers = poll("both offers at the renter", Duration::from_secs(30), || async {
        let o = json(&r_dir, &["offers", "gpu=h100", "--probe", "--json"])?;
        let o = o.as_array()?.clone();
        (o.len() == 2 && o.iter().all(|o| o["latency_ms"].is_number())).then_some(o)
    })
    .await?;
    assert_eq!(offers[0]["price"], 1.5, "sorted by price: {offers:?}");
    // The book filters and ranks by the latencies the node measured.
    let near = json(&r_dir, &["offers", "gpu=h100", "latency<60000", "--sort", "latency", "--json"])
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default();
    assert_eq!(near.len(), 2, "both providers are measured: {near:?}");
    // Ranked by whole milliseconds.
    let ms = |o: &Value| o["latency_ms"].as_f64().map(f64::round);
    assert!(ms(&near[0]) <= ms(&near[1]), "{near:?}");

    let (code, out, err) = gpumesh(
        &r_dir,
        &["lease", "--best", "gpu=h100", "--gpus", "1", "--duration", "10m", "--sort", "price", "--json"],
    )?;
    assert_eq!(code, 0, "{out} {err}");
    assert!(
        err.contains("denied") || err.contains("policy"),
        "the cheap provider's reject is reported: {err}"
    );
    let lease: Value = serde_json::from_str(&out)?;
    assert_eq!(lease["provider"], dear_id.as_str());
    assert_eq!(lease["state"], "active");
    assert_eq!(lease["price"], 2.5);

    let id = lease["lease_id"].as_str().expect("id").to_string();
    let (code, out, err) = gpumesh(&r_dir, &["release", &id[..8]])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("released"), "{out}");
    let receipts = json(&r_dir, &["receipts", "--json"]).expect("receipts");
    assert_eq!(receipts[0]["lease_id"], id.as_str());
    for key in ["provider", "gpus", "start", "end", "amount"] {
        assert!(receipts[0].get(key).is_some(), "receipt lacks {key}");
    }
    // Nothing left to lease at an acceptable price: a clear error and a non-zero exit.
    let (code, _, err) =
        gpumesh(&r_dir, &["lease", "--best", "gpu=h100", "price<=1", "--gpus", "1", "--duration", "10m"])?;
    assert_ne!(code, 0);
    assert!(err.contains("no live offer"), "{err}");
    drop((renter, cheap, dear));
    Ok(())
}
