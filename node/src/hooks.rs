//! Lease hooks: the provider's `on_lease_start` and `on_lease_end` programs.
//!
//! Each gets the lease as one JSON object on stdin. `on_lease_start` must print a JSON object
//! on stdout (the access details sent to the renter, e.g. `{"host": …, "port": …, "user": …}`)
//! and exit 0 within the time limit; otherwise the lease is rejected and its GPUs freed.
//! `on_lease_end` runs when a lease ends or fails to start; its output is logged.

use crate::clock::rfc3339;
use gpumesh_protocol::lease::ProviderLease;
use serde::Serialize;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest hook output read, bytes.
const MAX_OUTPUT: usize = 64 * 1024;

/// What a hook reads on stdin.
#[derive(Debug, Serialize)]
pub struct HookInput<'a> {
    /// `start` or `end`.
    pub event: &'a str,
    pub lease_id: String,
    pub renter: String,
    pub offer_id: String,
    pub gpu_uuids: Vec<String>,
    pub gpu_indices: Vec<u32>,
    /// RFC 3339.
    pub start: String,
    pub end: String,
    /// Unix seconds of the end.
    pub end_unix: u64,
    pub ssh_key: Option<&'a str>,
    /// The lease state when the hook runs (`starting`, `released`, `expired`, `failed`).
    pub state: &'a str,
}

impl<'a> HookInput<'a> {
    pub fn new(event: &'a str, l: &'a ProviderLease) -> HookInput<'a> {
        HookInput {
            event,
            lease_id: l.lease_id.to_string(),
            renter: l.renter.to_string(),
            offer_id: l.offer_id.to_string(),
            gpu_uuids: l.gpus.iter().map(|g| g.uuid.clone()).collect(),
            gpu_indices: l.gpus.iter().map(|g| g.index).collect(),
            start: rfc3339(l.start),
            end: rfc3339(l.end),
            end_unix: l.end.as_secs(),
            ssh_key: l.ssh_key.as_deref(),
            state: l.state.as_str(),
        }
    }
}

/// Starts `program` with piped stdio. "Text file busy" (ETXTBSY) is retried for up to about
/// 200 ms: it is transient, seen when the script was just written and a process forked in the
/// meantime still holds the write descriptor until it execs (a deploy tool updating the hook
/// while the node runs, or tests that write hooks while other threads spawn).
async fn spawn(program: &Path) -> std::io::Result<tokio::process::Child> {
    const ETXTBSY: i32 = 26;
    let mut tries = 0;
    loop {
        let result = tokio::process::Command::new(program)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        match result {
            Err(e) if e.raw_os_error() == Some(ETXTBSY) && tries < 20 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

/// Runs a hook with `input` as JSON on stdin; returns its stdout, or why it failed.
pub async fn run(program: &Path, input: &HookInput<'_>, limit: Duration) -> Result<String, String> {
    let json = serde_json::to_vec(input).map_err(|e| format!("cannot encode hook input: {e}"))?;
    let mut child =
        spawn(program).await.map_err(|e| format!("cannot start hook {}: {e}", program.display()))?;
    let mut stdin = child.stdin.take().ok_or("hook stdin unavailable")?;
    let mut stdout = child.stdout.take().ok_or("hook stdout unavailable")?;
    let mut stderr = child.stderr.take().ok_or("hook stderr unavailable")?;
    let work = async {
        // A hook that does not read its stdin must not block us: ignore a broken pipe.
        let _ = stdin.write_all(&json).await;
        drop(stdin);
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut out_r = (&mut stdout).take(MAX_OUTPUT as u64);
        let mut err_r = (&mut stderr).take(MAX_OUTPUT as u64);
        let (r1, r2, status) =
            tokio::join!(out_r.read_to_end(&mut out), err_r.read_to_end(&mut err), child.wait());
        r1.map_err(|e| e.to_string())?;
        r2.map_err(|e| e.to_string())?;
        let status = status.map_err(|e| e.to_string())?;
        if !status.success() {
            let err = String::from_utf8_lossy(&err);
            return Err(format!("hook {} exited with {status}: {}", program.display(), err.trim()));
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    };
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => {
            Err(format!("hook {} took longer than {}", program.display(), humantime::format_duration(limit)))
        }
    }
}

/// Runs the start hook and checks that it printed a JSON object; returns that object's text.
pub async fn run_start(program: &Path, lease: &ProviderLease, limit: Duration) -> Result<String, String> {
    let out = run(program, &HookInput::new("start", lease), limit).await?;
    let text = out.trim();
    let text = if text.is_empty() { "{}" } else { text };
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) if v.is_object() => Ok(v.to_string()),
        _ => Err(format!("start hook {} did not print a JSON object", program.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpumesh_protocol::lease::{GpuUnit, LeaseState};
    use gpumesh_protocol::{Bytes, LeaseId, NodeId, OfferId, Price, Timestamp};
    use std::os::unix::fs::PermissionsExt;

    fn lease() -> ProviderLease {
        ProviderLease {
            lease_id: LeaseId::from_bytes([1; 8]),
            renter: NodeId::from_bytes([2; 32]),
            offer_id: OfferId::from_bytes([3; 8]),
            gpus: vec![GpuUnit { uuid: "GPU-x".into(), index: 3 }],
            price: Price(1),
            start: Timestamp(0),
            end: Timestamp(3_600_000),
            state: LeaseState::Starting,
            request: Bytes(vec![]),
            ssh_key: Some("ssh-ed25519 AAAA".into()),
            access: String::new(),
            grant: None,
            receipt: None,
        }
    }

    fn script(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[tokio::test]
    async fn start_hook_reads_the_lease_and_prints_access() {
        let dir = tempfile::tempdir().unwrap();
        // Echo the GPU uuid from stdin back inside the access object.
        let p = script(
            dir.path(),
            "start.sh",
            r#"read line; uuid=$(echo "$line" | sed 's/.*"gpu_uuids":\["\([^"]*\)".*/\1/'); echo "{\"host\":\"10.0.0.5\",\"gpu\":\"$uuid\"}""#,
        );
        let access = run_start(&p, &lease(), Duration::from_secs(5)).await.unwrap();
        assert_eq!(access, r#"{"gpu":"GPU-x","host":"10.0.0.5"}"#);
    }

    #[tokio::test]
    async fn failing_slow_and_silly_hooks_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let fail = script(dir.path(), "fail.sh", "echo nope >&2; exit 3");
        let e = run_start(&fail, &lease(), Duration::from_secs(5)).await.unwrap_err();
        assert!(e.contains("nope"), "{e}");
        let slow = script(dir.path(), "slow.sh", "sleep 5");
        let e = run_start(&slow, &lease(), Duration::from_millis(200)).await.unwrap_err();
        assert!(e.contains("longer than"), "{e}");
        let silly = script(dir.path(), "silly.sh", "echo not-json");
        assert!(run_start(&silly, &lease(), Duration::from_secs(5)).await.is_err());
        let missing = dir.path().join("nope");
        assert!(
            run_start(&missing, &lease(), Duration::from_secs(5)).await.unwrap_err().contains("cannot start")
        );
    }
}
