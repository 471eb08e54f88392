//! The local API and the node's files (issue 7, part 7). `tests/cli.rs` already checks that
//! `GET /v1/status` wants the token (none, or `wrong`: 401) and that a `node.key` readable by
//! others stops the node; this file extends that to every route and every shape of wrong
//! token, body size limits, the loopback rule for the API address, file modes, and corrupt
//! config and key files (a clear error naming the file or field, a non-zero exit, never a
//! panic).

use anyhow::Result;
use gpumesh_tests::{Proc, TestNode, gpumesh, test_config, wait_for};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

const NODE: [&str; 5] = ["node", "--no-mdns", "--network", "t-api", "--listen"];
const LISTEN: &str = "/ip4/127.0.0.1/tcp/0";

/// Runs `gpumesh --data-dir DIR --api API node …` to completion (it is expected to fail).
fn node_once(dir: &Path, api: &str, extra: &[&str]) -> Result<(i32, String)> {
    let mut args = vec!["--api", api];
    args.extend(NODE);
    args.push(LISTEN);
    args.extend(extra);
    let (code, _, err) = gpumesh(dir, &args)?;
    Ok((code, err))
}

/// A refusal: non-zero exit, not a panic (exit code 101), one clear error line mentioning
/// every `needle`.
fn assert_clear_error(what: &str, code: i32, err: &str, needles: &[&str]) {
    assert!(code != 0 && code != 101, "{what}: exit code {code}, stderr:\n{err}");
    assert!(!err.contains("panicked"), "{what}: panicked:\n{err}");
    for n in needles {
        assert!(err.contains(n), "{what}: the error does not mention `{n}`:\n{err}");
    }
    assert!(err.trim_start().starts_with("error:"), "{what}: not an error line:\n{err}");
}

fn chmod(path: &Path, mode: u32) -> Result<()> {
    Ok(std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?)
}

fn mode(path: &Path) -> Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_a_missing_or_wrong_token_of_any_shape_and_does_nothing() -> Result<()> {
    let n = TestNode::start(test_config("t-api-auth", Some("RTX-4090:1"), &[])).await?;
    let (api, token) = (n.running().api, n.running().token.clone());
    let http = reqwest::Client::new();
    let mut last = token.clone();
    let flip = |c: char| if c == '0' { '1' } else { '0' };
    last.replace_range(last.len() - 1.., &flip(token.chars().last().unwrap_or('0')).to_string());
    let wrong: Vec<(&str, Option<String>)> = vec![
        ("no Authorization header", None),
        ("`Bearer wrong`", Some("Bearer wrong".into())),
        ("the token with its last character changed", Some(format!("Bearer {last}"))),
        ("a prefix of the token", Some(format!("Bearer {}", &token[..token.len() / 2]))),
        ("the token with a character added", Some(format!("Bearer {token}0"))),
        ("the token without a scheme", Some(token.clone())),
        ("the token as Basic credentials", Some(format!("Basic {token}"))),
        ("an empty bearer token", Some("Bearer ".into())),
    ];
    let routes: &[(&str, &str, &str)] = &[
        ("GET", "/v1/status", ""),
        ("GET", "/v1/peers", ""),
        ("GET", "/v1/gpus", ""),
        ("GET", "/v1/offers?q=", ""),
        ("GET", "/v1/leases", ""),
        ("GET", "/v1/leases/abcd", ""),
        ("GET", "/v1/receipts", ""),
        ("GET", "/metrics", ""),
        ("POST", "/v1/query", r#"{"q":""}"#),
        ("POST", "/v1/probe", r#"{"q":""}"#),
        ("POST", "/v1/leases", r#"{"offer":"00","gpus":1,"duration_s":60}"#),
        ("POST", "/v1/leases/abcd/release", "{}"),
        ("POST", "/v1/price", r#"{"price":"0.01"}"#),
        ("POST", "/v1/peers/12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB/block", ""),
    ];
    let mut failures = Vec::new();
    for (method, path, body) in routes {
        for (what, auth) in &wrong {
            let url = format!("http://{api}{path}");
            let mut req = if *method == "GET" { http.get(&url) } else { http.post(&url) };
            if !body.is_empty() {
                req = req.header("content-type", "application/json").body(body.to_string());
            }
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            // The token in the query string is no token either.
            let req = req.query(&[("token", &token)]);
            let r = req.send().await?;
            let status = r.status().as_u16();
            let text = r.text().await?;
            if status != 401 || !text.contains("\"unauthorized\"") {
                failures.push(format!("{method} {path} with {what}: {status} {text}"));
            }
        }
    }
    // Nothing happened: the price is unchanged and the peer is not blocked.
    let own = n.offers_of(&n.peer_id()).await?;
    assert_ne!(own[0].price_micros, 10_000, "an unauthenticated POST /v1/price changed the price");
    assert!(failures.is_empty(), "{} requests were not refused:\n{}", failures.len(), failures.join("\n"));
    // And the right token works.
    let r = http.get(format!("http://{api}/v1/status")).bearer_auth(&token).send().await?;
    assert_eq!(r.status().as_u16(), 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_over_64_kib_get_413_and_the_limit_is_enforced_after_auth() -> Result<()> {
    let n = TestNode::start(test_config("t-api-body", Some("RTX-4090:1"), &[])).await?;
    let (api, token) = (n.running().api, n.running().token.clone());
    // A fresh connection per request: the node may close one after refusing a body.
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
    let max = gpumesh_node::api::MAX_BODY;
    // A JSON body of exactly `len` bytes: a lease request whose SSH key pads it out.
    let body = |len: usize| {
        let head = r#"{"offer":"00","gpus":1,"duration_s":60,"ssh_key":""#;
        let tail = r#""}"#;
        format!("{head}{}{tail}", "k".repeat(len - head.len() - tail.len()))
    };
    let post = |path: &str, b: String, auth: bool| {
        let mut r =
            http.post(format!("http://{api}{path}")).header("content-type", "application/json").body(b);
        if auth {
            r = r.bearer_auth(&token);
        }
        r.send()
    };
    for path in ["/v1/leases", "/v1/query", "/v1/probe", "/v1/price"] {
        let r = post(path, body(max + 1), true).await?;
        assert_eq!(r.status().as_u16(), 413, "{path} with {} bytes", max + 1);
        // 8 MiB: refused with 413, or the connection closed before the node read it all.
        match post(path, body(8 * 1024 * 1024), true).await {
            Ok(r) => assert_eq!(r.status().as_u16(), 413, "{path} with 8 MiB"),
            Err(e) => println!("{path} with 8 MiB: the node closed the connection mid-body ({e})"),
        }
        // Without the token the size does not matter: 401 first.
        let r = post(path, body(max + 1), false).await?;
        assert_eq!(r.status().as_u16(), 401, "{path} without a token");
    }
    // At the limit the body is read (and refused for what it says, not for its size).
    let r = post("/v1/leases", body(max), true).await?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    assert!(status != 413 && (400..500).contains(&status), "{max} bytes: {status} {text}");
    // The node still serves.
    let r = http.get(format!("http://{api}/v1/status")).bearer_auth(&token).send().await?;
    assert_eq!(r.status().as_u16(), 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_beyond_loopback_is_refused_unless_the_config_allows_it_and_then_the_node_warns() -> Result<()>
{
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("n");
    for api in ["0.0.0.0:0", "[::]:0", "192.0.2.1:4748"] {
        let (code, err) = node_once(&dir, api, &[])?;
        assert_clear_error(api, code, &err, &["api_allow_remote", "loopback"]);
    }
    assert!(!dir.join("api.json").exists(), "a refused node wrote its API address");

    // Allowed in the config: the node starts, serves on every interface, and says so in its log.
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("gpumesh.toml"), "api_allow_remote = true\n")?;
    let mut node = Proc::node_with_api(
        &dir,
        "0.0.0.0:0",
        &NODE[1..].iter().copied().chain([LISTEN]).collect::<Vec<_>>(),
    )?;
    let status = node.ready().await?;
    assert!(status.api.starts_with("0.0.0.0:"), "{}", status.api);
    let log = dir.with_extension("log");
    wait_for("the warning in the node's log", Duration::from_secs(20), || async {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("WARN") && l.contains("beyond loopback"))
    })
    .await?;
    // Still behind the token.
    let port = status.api.rsplit(':').next().unwrap_or_default();
    let r = reqwest::get(format!("http://127.0.0.1:{port}/v1/status")).await?;
    assert_eq!(r.status().as_u16(), 401);
    node.signal(2)?;
    assert_eq!(node.wait_exit(Duration::from_secs(20)).await?, Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_key_and_data_dir_are_private_and_a_token_others_can_read_is_refused() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("n");
    let mut args: Vec<&str> = NODE[1..].to_vec();
    args.push(LISTEN);
    let mut node = Proc::node(&dir, &args)?;
    node.ready().await?;
    assert_eq!(mode(&dir.join("api.token"))?, 0o600, "api.token");
    assert_eq!(mode(&dir.join("node.key"))?, 0o600, "node.key");
    assert_eq!(mode(&dir)?, 0o700, "the data dir");

    for loose in [0o644, 0o640, 0o604, 0o660] {
        chmod(&dir.join("api.token"), loose)?;
        let (code, _, err) = gpumesh(&dir, &["status"])?;
        assert_clear_error(&format!("api.token mode {loose:o}"), code, &err, &["api.token", "chmod 600"]);
    }
    chmod(&dir.join("api.token"), 0o600)?;
    let (code, out, err) = gpumesh(&dir, &["status"])?;
    assert_eq!(code, 0, "{out}{err}");
    node.signal(15)?;
    assert_eq!(node.wait_exit(Duration::from_secs(20)).await?, Some(0));

    // The key (0644 is in tests/cli.rs): group- or other-readable or writable keys are refused.
    for loose in [0o640, 0o604, 0o620, 0o602] {
        chmod(&dir.join("node.key"), loose)?;
        let (code, err) = node_once(&dir, "127.0.0.1:0", &[])?;
        assert_clear_error(&format!("node.key mode {loose:o}"), code, &err, &["node.key", "chmod 600"]);
    }
    Ok(())
}

#[test]
fn a_corrupt_config_gives_a_clear_error_naming_the_file_or_field_and_never_panics() -> Result<()> {
    let cases: &[(&str, &[u8], &[&str])] = &[
        ("garbage", b"this is ][ not toml", &["gpumesh.toml"]),
        ("bytes that are not UTF-8", b"network = \"\xff\xfe\x00\x01\"\n", &["gpumesh.toml"]),
        ("an unknown key", b"nettwork = \"x\"\n", &["gpumesh.toml", "nettwork"]),
        ("an unknown key in a table", b"[tuning]\nheartbeat = \"1s\"\n", &["gpumesh.toml", "heartbeat"]),
        ("a wrong type", b"max_connections = \"many\"\n", &["gpumesh.toml", "max_connections"]),
        ("a number too large", b"max_connections = 99999999999999999999999\n", &["gpumesh.toml"]),
        ("a bad duration", b"offer_ttl = \"soon\"\n", &["offer_ttl"]),
        ("a bad region", b"region = \"somewhere far\"\n", &["region"]),
        ("a negative price", b"price = \"-1\"\n", &["price"]),
        ("a bad renter id", b"[policy]\ndeny = [\"bob\"]\n", &["policy.deny"]),
        ("a bad hook timeout", b"[hooks]\ntimeout = \"forever\"\n", &["hooks.timeout"]),
        (
            "a hook timeout renters would not wait for",
            b"[hooks]\ntimeout = \"5m\"\n",
            &["hooks.timeout", "90s"],
        ),
        ("a zero cap", b"max_offers_per_provider = 0\n", &["max_offers_per_provider"]),
        ("a bad bootstrap address", b"bootstrap = [\"/ip4/1.2.3.4/tcp/1\"]\n", &["bootstrap", "/p2p/"]),
    ];
    for (what, text, needles) in cases {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("n");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("gpumesh.toml"), text)?;
        let (code, err) = node_once(&dir, "127.0.0.1:0", &[])?;
        assert_clear_error(what, code, &err, needles);
    }
    // A config that is a directory, and a --config that does not exist.
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("n");
    std::fs::create_dir_all(dir.join("gpumesh.toml"))?;
    let (code, err) = node_once(&dir, "127.0.0.1:0", &[])?;
    assert_clear_error("a directory as config", code, &err, &["gpumesh.toml"]);
    let missing = tmp.path().join("missing.toml");
    let (code, err) = node_once(&dir, "127.0.0.1:0", &["--config", missing.to_str().unwrap_or_default()])?;
    assert_clear_error("a missing --config", code, &err, &["missing.toml", "does not exist"]);
    Ok(())
}

#[test]
fn a_corrupt_key_file_gives_a_clear_error_naming_it_and_never_panics() -> Result<()> {
    let cases: &[(&str, &[u8])] = &[
        ("not hex", b"this is not a key\n"),
        ("empty", b""),
        ("62 hex characters", &[b'a'; 62]),
        ("66 hex characters", &[b'a'; 66]),
        ("bytes that are not UTF-8", b"\xff\xfe\xfd\x00\x01"),
        ("a private key in another format", b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n"),
    ];
    for (what, bytes) in cases {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("n");
        gpumesh(&dir, &["init", "--network", "t-api"])?;
        std::fs::write(dir.join("node.key"), bytes)?;
        chmod(&dir.join("node.key"), 0o600)?;
        let (code, err) = node_once(&dir, "127.0.0.1:0", &[])?;
        assert_clear_error(what, code, &err, &["node.key"]);
    }
    // A directory where the key should be.
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("n");
    std::fs::create_dir_all(dir.join("node.key"))?;
    chmod(&dir.join("node.key"), 0o700)?;
    let (code, err) = node_once(&dir, "127.0.0.1:0", &[])?;
    assert_clear_error("a directory as key", code, &err, &["node.key"]);
    Ok(())
}
