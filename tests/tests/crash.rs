//! A provider process killed with SIGKILL during a lease and restarted on the same data dir:
//! the lease is still active, its GPU is not offered again until the lease ends, and then the
//! lease expires cleanly on both sides.

use anyhow::Result;
use gpumesh_tests::{Proc, gpumesh, poll, wait_for};
use serde_json::Value;
use std::time::Duration;

fn json(dir: &std::path::Path, args: &[&str]) -> Option<Value> {
    match gpumesh(dir, args) {
        Ok((0, out, _)) => serde_json::from_str(&out).ok(),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_provider_keeps_its_lease_and_does_not_reoffer_the_gpu() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (r_dir, p_dir) = (tmp.path().join("renter"), tmp.path().join("provider"));
    let common = ["--network", "t-crash", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"];
    let renter = Proc::node(&r_dir, &common)?;
    let boot = renter.ready().await?.listen_addrs[0].clone();
    let mut p_args = common.to_vec();
    p_args.extend(["--simulate-gpus", "RTX-4090:1", "--bootstrap", &boot]);
    // Short leases need a lower minimum than the default minute.
    std::fs::create_dir_all(&p_dir)?;
    std::fs::write(p_dir.join("gpumesh.toml"), "min_lease = \"1s\"\n")?;
    let mut provider = Proc::node(&p_dir, &p_args)?;
    let p_id = provider.ready().await?.peer_id;

    let offer_id = poll("the provider's offer at the renter", Duration::from_secs(30), || async {
        let offers = json(&r_dir, &["offers", "--json"])?;
        offers.as_array()?.iter().find(|o| o["provider"] == p_id.as_str())?["offer_id"]
            .as_str()
            .map(str::to_string)
    })
    .await?;
    let (code, out, err) =
        gpumesh(&r_dir, &["lease", &offer_id, "--gpus", "1", "--duration", "12s", "--json"])?;
    assert_eq!(code, 0, "{out} {err}");
    let lease: Value = serde_json::from_str(&out)?;
    let lease_id = lease["lease_id"].as_str().expect("lease id").to_string();
    assert_eq!(lease["state"], "active");

    // Crash the provider and bring it back on the same data dir.
    provider.signal(9)?;
    provider.wait_exit(Duration::from_secs(10)).await?;
    let provider = Proc::node(&p_dir, &p_args)?;
    provider.ready().await?;
    let leases = json(&p_dir, &["leases", "--json"]).expect("provider leases");
    let held = leases.as_array().expect("array").iter().find(|l| l["lease_id"] == lease_id.as_str()).cloned();
    let held = held.expect("the provider still knows the lease");
    assert_eq!((held["role"].as_str(), held["state"].as_str()), (Some("provider"), Some("active")));
    // Its own offer says the GPU is taken; so does the renter's book once re-advertised.
    let own = json(&p_dir, &["offers", "--json"]).expect("provider offers");
    assert_eq!(own[0]["gpu_count"], 0, "{own}");
    wait_for("the renter to see the GPU taken", Duration::from_secs(20), || async {
        json(&r_dir, &["offers", "--json"])
            .and_then(|o| o.as_array().cloned())
            .is_some_and(|o| o.iter().any(|o| o["provider"] == p_id.as_str() && o["gpu_count"] == 0))
    })
    .await?;

    // At its end the lease expires on both sides and the GPU is offered again.
    wait_for("the lease to end at the provider", Duration::from_secs(30), || async {
        json(&p_dir, &["lease", "show", &lease_id, "--json"]).is_some_and(|l| l["state"] == "expired")
    })
    .await?;
    wait_for("the renter's receipt", Duration::from_secs(30), || async {
        json(&r_dir, &["receipts", "--json"])
            .and_then(|r| r.as_array().cloned())
            .is_some_and(|r| r.iter().any(|r| r["lease_id"] == lease_id.as_str()))
    })
    .await?;
    // The freed GPU is re-advertised shortly after the receipt (republishes are coalesced).
    wait_for("the provider to offer the GPU again", Duration::from_secs(10), || async {
        json(&p_dir, &["offers", "--json"]).is_some_and(|o| o[0]["gpu_count"] == 1)
    })
    .await?;
    drop(renter);
    Ok(())
}
