//! The `gpumesh` binary against a running node process: init, status, peers, offers (table and
//! JSON), query errors, the API token, and clear errors when no node runs.

use anyhow::Result;
use gpumesh_tests::{Proc, gpumesh};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

#[test]
fn init_twice_without_force_refuses() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("n");
    let (code, out, _) = gpumesh(&dir, &["init", "--network", "t-cli"])?;
    assert_eq!(code, 0);
    assert!(out.trim().starts_with("12D3KooW"), "{out}");
    let mode = std::fs::metadata(dir.join("node.key"))?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (code, _, err) = gpumesh(&dir, &["init"])?;
    assert_ne!(code, 0);
    assert!(err.contains("--force"), "{err}");
    let (code, out2, _) = gpumesh(&dir, &["init", "--force"])?;
    assert_eq!(code, 0);
    assert_ne!(out, out2, "--force makes a new identity");
    Ok(())
}

#[test]
fn commands_without_a_running_node_say_how_to_start_one() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (code, _, err) = gpumesh(tmp.path(), &["status"])?;
    assert_ne!(code, 0);
    assert!(err.contains("gpumesh --data-dir") && err.contains("node"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    Ok(())
}

#[test]
fn gpus_lists_simulated_inventory_without_a_node() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (code, out, _) = gpumesh(tmp.path(), &["gpus", "--simulate-gpus", "H100-SXM-80GB:2", "--json"])?;
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let items = v.as_array().expect("an array");
    assert_eq!(items.len(), 2);
    for g in items {
        assert_eq!(g["source"], "simulated");
        assert_eq!(g["vram_mib"], 81559);
        assert!(g["uuid"].as_str().unwrap().starts_with("GPU-"));
    }
    let (code, _, err) = gpumesh(tmp.path(), &["gpus", "--simulate-gpus", "NoSuchCard:1"])?;
    assert_ne!(code, 0);
    assert!(err.contains("NoSuchCard"), "{err}");
    Ok(())
}

/// With `--json` the list stays alone on stdout, and when it is empty the reasons (no NVML,
/// no nvidia-smi on PATH) go to stderr instead of being lost. PATH is an empty directory, so
/// nvidia-smi cannot be found; on a machine with a GPU, NVML may still find it, and then there
/// is nothing to explain.
#[test]
fn gpus_json_with_nothing_found_says_why_on_stderr() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let empty = tempfile::tempdir()?;
    let out = std::process::Command::new(gpumesh_tests::gpumesh_bin())
        .arg("--data-dir")
        .arg(tmp.path())
        .args(["gpus", "--json"])
        .env("PATH", empty.path())
        .output()?;
    assert_eq!(out.status.code(), Some(0));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let list = list.as_array().expect("stdout is a JSON array");
    let err = String::from_utf8_lossy(&out.stderr);
    if list.is_empty() {
        assert!(err.contains("nvidia-smi"), "stderr should say nvidia-smi was not found: {err}");
        assert!(err.contains("no GPUs found"), "{err}");
    }
    Ok(())
}

#[test]
fn a_key_readable_by_others_is_refused() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("n");
    gpumesh(&dir, &["init"])?;
    std::fs::set_permissions(dir.join("node.key"), std::fs::Permissions::from_mode(0o644))?;
    let (code, _, err) =
        gpumesh(&dir, &["--api", "127.0.0.1:0", "node", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"])?;
    assert_ne!(code, 0);
    assert!(err.contains("chmod 600"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_peers_offers_as_tables_and_json_and_the_api_wants_its_token() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("n");
    let mut node = Proc::node(
        &dir,
        &[
            "--network",
            "t-cli",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--simulate-gpus",
            "H100-SXM-80GB:2,RTX-4090:1",
        ],
    )?;
    let status = node.ready().await?;
    assert_eq!(status.network, "t-cli");
    assert!(status.listen_addrs[0].ends_with(&format!("/p2p/{}", status.peer_id)));

    let (code, out, _) = gpumesh(&dir, &["status"])?;
    assert_eq!(code, 0);
    assert!(out.contains(&status.peer_id));

    let (code, out, _) = gpumesh(&dir, &["peers", "--json"])?;
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out)?, serde_json::json!([]));
    let (code, out, _) = gpumesh(&dir, &["peers"])?;
    assert_eq!((code, out.trim()), (0, "no connected peers"));

    // The node's own offers are in its book.
    let (code, out, _) = gpumesh(&dir, &["offers", "--json", "--sort", "price"])?;
    assert_eq!(code, 0);
    let offers: Vec<serde_json::Value> = serde_json::from_str(&out)?;
    assert_eq!(offers.len(), 2);
    for key in [
        "offer_id",
        "provider",
        "gpu_model",
        "gpu_count",
        "gpu_total",
        "vram_mib",
        "price",
        "region",
        "expires_at",
        "latency_ms",
    ] {
        assert!(offers[0].get(key).is_some(), "missing {key}: {}", offers[0]);
    }
    assert_eq!(offers[0]["gpu_model"], "RTX-4090", "cheapest first");
    assert!(offers[0]["price"].is_number());
    let (code, out, _) = gpumesh(&dir, &["offers", "gpu=h100"])?;
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("OFFER") && lines[0].contains("USD/GPU-H"), "{out}");
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[1].contains("H100-SXM-80GB"));

    // A bad query is an error naming the term.
    let (code, _, err) = gpumesh(&dir, &["offers", "gpu=h100", "vrma>=80"])?;
    assert_ne!(code, 0);
    assert!(err.contains("vrma") && err.contains("did you mean `vram`"), "{err}");

    // Without the token: 401.
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/status", status.api);
    let r = http.get(&url).send().await?;
    assert_eq!(r.status().as_u16(), 401);
    let r = http.get(&url).bearer_auth("wrong").send().await?;
    assert_eq!(r.status().as_u16(), 401);
    let token = std::fs::read_to_string(dir.join("api.token"))?;
    let r = http.get(&url).bearer_auth(token.trim()).send().await?;
    assert_eq!(r.status().as_u16(), 200);
    let metrics = http.get(format!("http://{}/metrics", status.api)).bearer_auth(token.trim()).send().await?;
    assert!(metrics.text().await?.contains("gpumesh_offers_known"));

    // SIGINT: clean exit 0, API file removed.
    node.signal(2)?;
    let code = node.wait_exit(std::time::Duration::from_secs(20)).await?;
    assert_eq!(code, Some(0));
    assert!(!dir.join("api.json").exists());
    Ok(())
}

/// Two nodes on one machine (different data dirs, as a service and a manual run would be) see
/// the same GPUs; only the first offers them, so no GPU can be leased through both. When it
/// stops cleanly (no lease live), a node started next offers the GPUs; when a node crashes,
/// only that node may take them again. The GPUs come
/// from a stand-in `nvidia-smi` on PATH (on a machine with NVML the real GPUs are used
/// instead, with the same outcome).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_host_never_offer_the_same_gpu() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin)?;
    let smi = bin.join("nvidia-smi");
    std::fs::write(
        &smi,
        "#!/bin/sh\ncase \"$1\" in\n--query-gpu=*)\n\
         echo '0, GPU-11111111-2222-3333-4444-555555555555, NVIDIA GeForce RTX 4090, 24564, 8.9, 550.54.14, Disabled'\n\
         echo '1, GPU-66666666-7777-8888-9999-000000000000, NVIDIA GeForce RTX 4090, 24564, 8.9, 550.54.14, Disabled'\n\
         ;;\nesac\n",
    )?;
    std::fs::set_permissions(&smi, std::fs::Permissions::from_mode(0o755))?;
    let config = tmp.path().join("gpumesh.toml");
    std::fs::write(&config, format!("gpu_lock_dir = '{}'\n", tmp.path().join("locks").display()))?;
    let config = config.to_str().expect("a UTF-8 temp path");
    let start_with_api = |name: &str, api: &str| {
        Proc::node_with_env(
            &tmp.path().join(name),
            api,
            &[("PATH", bin.as_os_str())],
            &["--network", "t-claim", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0", "--config", config],
        )
    };
    let start = |name: &str| start_with_api(name, "127.0.0.1:0");

    // A node that fails to start (its API port is taken) does not keep the GPUs it locked.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let mut failed = start_with_api("failed", &taken.local_addr()?.to_string())?;
    assert_ne!(failed.wait_exit(Duration::from_secs(30)).await?, Some(0), "the API port was taken");

    let mut first = start("first")?;
    let offered = first.ready().await?.local_gpus;
    assert!(offered >= 1, "the first node offers the host's GPUs");
    let second = start("second")?;
    assert_eq!(second.ready().await?.local_gpus, 0, "the second node offers none of them");
    let log = std::fs::read_to_string(tmp.path().join("second.log"))?;
    assert!(log.contains("another gpumesh node on this host"), "the second node says why: {log}");

    first.signal(15)?;
    first.wait_exit(Duration::from_secs(30)).await?;
    let mut third = start("third")?;
    assert_eq!(third.ready().await?.local_gpus, offered, "the first node let go of its GPUs on a clean stop");

    // A node that crashes may leave leases running: its GPUs stay its own, for it alone to
    // take back.
    third.signal(9)?;
    third.wait_exit(Duration::from_secs(30)).await?;
    let fourth = start("fourth")?;
    assert_eq!(fourth.ready().await?.local_gpus, 0, "a crashed node's GPUs are not taken over");
    let log = std::fs::read_to_string(tmp.path().join("fourth.log"))?;
    assert!(log.contains("which is not running"), "the fourth node says why: {log}");
    let third = start("third")?;
    assert_eq!(third.ready().await?.local_gpus, offered, "the crashed node takes its GPUs back");
    Ok(())
}
