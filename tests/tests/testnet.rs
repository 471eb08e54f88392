//! `gpumesh testnet` end to end: it comes up, the CLI works against its nodes, SIGINT stops
//! every node and exits 0, and SIGKILL leaves no node behind.

use anyhow::{Context, Result};
use gpumesh_tests::{gpumesh, gpumesh_bin, kill, poll, wait_for};
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Whether a process is alive (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().and_then(|s| s.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

fn start(dir: &Path) -> Result<Child> {
    let log = std::fs::File::create(dir.with_extension("log"))?;
    Ok(Command::new(gpumesh_bin())
        .args(["testnet", "--nodes", "5", "--seed", "3", "--dir"])
        .arg(dir)
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()?)
}

async fn ready(dir: &Path) -> Result<Vec<Value>> {
    let file = dir.join("testnet.json");
    poll("testnet.json", Duration::from_secs(120), || async {
        let text = std::fs::read_to_string(&file).ok()?;
        serde_json::from_str::<Vec<Value>>(&text).ok()
    })
    .await
}

fn json(dir: &str, args: &[&str]) -> Result<Value> {
    let (code, out, err) = gpumesh(Path::new(dir), args)?;
    anyhow::ensure!(code == 0, "gpumesh {args:?} failed ({code}): {err}");
    serde_json::from_str(&out).with_context(|| format!("parsing {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testnet_comes_up_serves_the_cli_and_stops_cleanly_on_sigint() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("net");
    let mut child = start(&dir)?;
    let nodes = ready(&dir).await?;
    assert_eq!(nodes.len(), 5);
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n["name"], format!("node-{i}"));
        for key in ["data_dir", "peer_id", "api", "pid", "listen_addrs"] {
            assert!(n.get(key).is_some(), "testnet.json lacks {key}");
        }
    }
    let dir_of = |i: usize| nodes[i]["data_dir"].as_str().expect("data_dir").to_string();
    let pids: Vec<u32> = nodes.iter().map(|n| n["pid"].as_u64().expect("pid") as u32).collect();

    // The CLI against two different nodes.
    let renter = dir_of(1);
    let offers = json(&renter, &["offers", "--json"])?;
    let me = nodes[1]["peer_id"].as_str().expect("peer id");
    let theirs: Vec<&Value> =
        offers.as_array().expect("array").iter().filter(|o| o["provider"] != me).collect();
    assert!(!theirs.is_empty());
    let other = json(&dir_of(2), &["query", "--json", "--timeout", "5s"])?;
    assert_eq!(other["answered"].as_array().expect("answered").len(), 4, "{other}");
    let target = theirs[0]["offer_id"].as_str().expect("offer id");
    let lease = json(&renter, &["lease", target, "--gpus", "1", "--duration", "1m", "--json"])?;
    assert_eq!(lease["state"], "active");
    let id = lease["lease_id"].as_str().expect("lease id");
    let released = json(&renter, &["release", id, "--json"])?;
    assert_eq!(released["state"], "released");

    // SIGINT: every node stops, the testnet exits 0.
    kill(child.id() as i32, 2)?;
    let status = poll("the testnet to exit", Duration::from_secs(30), || {
        let s = child.try_wait().ok().flatten();
        async move { s }
    })
    .await?;
    assert_eq!(status.code(), Some(0));
    for pid in pids {
        assert!(!alive(pid), "node {pid} outlived the testnet");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_testnet_leaves_no_node_behind() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("net");
    let mut child = start(&dir)?;
    let nodes = ready(&dir).await?;
    let pids: Vec<u32> = nodes.iter().map(|n| n["pid"].as_u64().expect("pid") as u32).collect();
    assert!(pids.iter().all(|p| alive(*p)));
    child.kill()?; // SIGKILL
    child.wait()?;
    wait_for("every node to exit", Duration::from_secs(20), || {
        let any = pids.iter().any(|p| alive(*p));
        async move { !any }
    })
    .await?;
    Ok(())
}
