//! Reading GPUs by running `nvidia-smi`, the fallback when NVML cannot be loaded.
//!
//! [`detect`] runs `nvidia-smi --query-gpu=<fields> --format=csv,noheader,nounits` with
//! [`QUERY_FIELDS`] (the six fields of [`BASE_QUERY_FIELDS`] plus `mig.mode.current`), falls
//! back to the six when the driver rejects `mig.mode.current`, then reads the CUDA version from
//! `nvidia-smi --version` or, failing that, from plain `nvidia-smi`'s header. Each run is
//! killed after a timeout: a hung driver must not hang the node. [`parse_nvidia_smi_csv`] is
//! the pure parser. Drivers older than 510 (no `compute_cap` field) are only read via NVML.

use super::{DetectedGpu, GpuSource, RawGpu, finish, known};
use gpumesh_protocol::ComputeCapability;
use std::ffi::OsString;
use std::io::{self, Read};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The fields [`detect`] asks for first, in the order [`parse_nvidia_smi_csv`] reads them.
pub const QUERY_FIELDS: &str = "index,uuid,name,memory.total,compute_cap,driver_version,mig.mode.current";
/// The fields asked for when the driver does not know `mig.mode.current`.
pub const BASE_QUERY_FIELDS: &str = "index,uuid,name,memory.total,compute_cap,driver_version";

/// How long one `nvidia-smi` run may take before it is killed.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Output kept from one run; the rest is read and dropped.
const MAX_OUTPUT: u64 = 4 * 1024 * 1024;
/// Characters of an offending line quoted in a note.
const EXCERPT_CHARS: usize = 100;

/// Parses `nvidia-smi --query-gpu=index,uuid,name,memory.total,compute_cap,driver_version
/// [,mig.mode.current] --format=csv,noheader,nounits` output.
///
/// Returns the GPUs found and notes on every line that was skipped or patched. Rows have 6
/// fields, or 7 with the MIG mode (`Enabled` sets [`DetectedGpu::mig`]). Blank lines, `\r\n`
/// endings, a byte-order mark and spaces around fields are fine; `[N/A]`, `[Not Supported]`
/// and empty fields are unknown. Other lines (`No devices were found`, driver errors) become
/// notes. [`DetectedGpu::cuda_version`] is left `None`: this output does not carry it.
pub fn parse_nvidia_smi_csv(text: &str) -> (Vec<DetectedGpu>, Vec<String>) {
    let mut notes = Vec::new();
    let rows = parse_rows(text, &mut notes);
    let gpus = finish(rows, GpuSource::NvidiaSmi, &mut notes);
    (gpus, notes)
}

fn excerpt(line: &str) -> String {
    let mut chars = line.chars();
    let head: String = chars.by_ref().take(EXCERPT_CHARS).collect();
    if chars.next().is_some() { format!("{head}…") } else { head }
}

/// `81559` or `81559 MiB` as MiB.
fn parse_mib(field: &str) -> Option<u32> {
    let f = field.trim();
    let f = f.strip_suffix("MiB").or_else(|| f.strip_suffix("mib")).unwrap_or(f).trim();
    f.parse().ok()
}

fn parse_rows(text: &str, notes: &mut Vec<String>) -> Vec<(String, RawGpu)> {
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start_matches('\u{feff}').trim();
        if line.is_empty() {
            continue;
        }
        let origin = format!("nvidia-smi line {}", n + 1);
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() == 1 {
            notes.push(format!("{origin}: nvidia-smi said: {}", excerpt(line)));
            continue;
        }
        if f.len() != 6 && f.len() != 7 {
            notes.push(format!(
                "{origin}: not a GPU row (expected 6 or 7 comma-separated fields, found {}): {}",
                f.len(),
                excerpt(line)
            ));
            continue;
        }
        let Some(index) = known(f[0]).and_then(|i| i.parse::<u32>().ok()) else {
            notes.push(format!("{origin}: skipped: GPU index `{}` is not a number", f[0]));
            continue;
        };
        let vram_mib = known(f[3]).and_then(|m| {
            let mib = parse_mib(m);
            if mib.is_none() {
                notes.push(format!("{origin}: memory.total `{m}` is not a number of MiB"));
            }
            mib
        });
        let compute_capability = known(f[4]).and_then(|c| {
            let cc = c.parse::<ComputeCapability>().ok();
            if cc.is_none() {
                notes.push(format!("{origin}: compute_cap `{c}` is not MAJOR.MINOR"));
            }
            cc
        });
        let raw = RawGpu {
            index,
            uuid: known(f[1]).map(str::to_string),
            name: known(f[2]).map(str::to_string),
            vram_mib,
            compute_capability,
            driver_version: known(f[5]).map(str::to_string),
            cuda_version: None,
            mig: f.get(6).and_then(|m| known(m)).is_some_and(|m| m.eq_ignore_ascii_case("enabled")),
            nvlink_active: false,
        };
        rows.push((origin, raw));
    }
    rows
}

/// Finds the CUDA version in `nvidia-smi --version` (`CUDA Version        : 12.8`) or plain
/// `nvidia-smi` (`… CUDA Version: 12.4     |`) output.
pub fn parse_cuda_version(text: &str) -> Option<String> {
    const LABEL: &str = "cuda version";
    let lower = text.to_ascii_lowercase();
    let at = lower.find(LABEL)? + LABEL.len();
    let rest = text[at..].trim_start_matches(|c: char| c == ':' || c.is_whitespace());
    let version: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let valid = version.contains('.') && version.split('.').all(|part| !part.is_empty() && part.len() <= 4);
    valid.then_some(version)
}

/// How to run `nvidia-smi`: the program, arguments put before the query, and a timeout.
#[derive(Clone, Debug)]
pub(crate) struct SmiCommand {
    pub program: OsString,
    pub prefix_args: Vec<OsString>,
    pub timeout: Duration,
}

impl Default for SmiCommand {
    fn default() -> Self {
        SmiCommand {
            program: OsString::from("nvidia-smi"),
            prefix_args: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Why `nvidia-smi` produced no output.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("nvidia-smi not found")]
    NotFound,
    #[error("could not start nvidia-smi: {0}")]
    Spawn(#[source] io::Error),
    #[error("nvidia-smi did not finish within {0:?} and was killed (is the driver hung?)")]
    TimedOut(Duration),
    #[error("could not wait for nvidia-smi: {0}")]
    Wait(#[source] io::Error),
}

struct RunOutput {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl RunOutput {
    /// The first non-empty line of stderr, else of stdout, for notes.
    fn first_message(&self) -> String {
        let first = |s: &str| s.lines().map(str::trim).find(|l| !l.is_empty()).map(excerpt);
        first(&self.stderr).or_else(|| first(&self.stdout)).unwrap_or_default()
    }
}

fn read_capped(mut from: impl Read) -> Vec<u8> {
    let mut buf = Vec::new();
    // A read error leaves what was read so far: partial output is still worth parsing.
    let _ = from.by_ref().take(MAX_OUTPUT).read_to_end(&mut buf);
    let _ = io::copy(&mut from, &mut io::sink());
    buf
}

fn reader(from: impl Read + Send + 'static) -> io::Result<thread::JoinHandle<Vec<u8>>> {
    thread::Builder::new().name("nvidia-smi-reader".into()).spawn(move || read_capped(from))
}

fn run(cmd: &SmiCommand, args: &[&str]) -> Result<RunOutput, RunError> {
    let mut child = Command::new(&cmd.program)
        .args(&cmd.prefix_args)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => RunError::NotFound,
            _ => RunError::Spawn(e),
        })?;
    let mut start_readers = || -> io::Result<_> {
        let out = child.stdout.take().map(reader).transpose()?;
        let err = child.stderr.take().map(reader).transpose()?;
        Ok((out, err))
    };
    let (out_reader, err_reader) = match start_readers() {
        Ok(readers) => readers,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(RunError::Spawn(e));
        }
    };
    let deadline = Instant::now() + cmd.timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                // The reader threads end by themselves once the pipes close.
                return Err(RunError::TimedOut(cmd.timeout));
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunError::Wait(e));
            }
        }
    };
    let collect = |h: Option<thread::JoinHandle<Vec<u8>>>| {
        let bytes = h.and_then(|h| h.join().ok()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Ok(RunOutput { status, stdout: collect(out_reader), stderr: collect(err_reader) })
}

fn query(cmd: &SmiCommand, fields: &str) -> Result<RunOutput, RunError> {
    let query = format!("--query-gpu={fields}");
    run(cmd, &[&query, "--format=csv,noheader,nounits"])
}

/// Runs `nvidia-smi` and parses what it lists; notes say what was tried.
pub fn detect() -> (Vec<DetectedGpu>, Vec<String>) {
    detect_with(&SmiCommand::default())
}

pub(crate) fn detect_with(cmd: &SmiCommand) -> (Vec<DetectedGpu>, Vec<String>) {
    let mut notes = Vec::new();
    let attempt = |fields: &str, notes: &mut Vec<String>| match query(cmd, fields) {
        Ok(out) => {
            let (gpus, parse_notes) = parse_nvidia_smi_csv(&out.stdout);
            Some((out, gpus, parse_notes))
        }
        Err(e) => {
            tracing::debug!(error = %e, "nvidia-smi query failed");
            notes.push(e.to_string());
            None
        }
    };

    let Some(mut result) = attempt(QUERY_FIELDS, &mut notes) else {
        return (Vec::new(), notes);
    };
    let field_rejected = |out: &RunOutput| {
        !out.status.success()
            && (out.stdout.contains("mig.mode.current") || out.stderr.contains("mig.mode.current"))
    };
    if result.1.is_empty() && field_rejected(&result.0) {
        notes.push(format!(
            "nvidia-smi rejected the query with {} ({}); retrying without mig.mode.current",
            result.0.status,
            result.0.first_message()
        ));
        match attempt(BASE_QUERY_FIELDS, &mut notes) {
            Some(retry) => result = retry,
            None => return (Vec::new(), notes),
        }
    }
    let (out, mut gpus, mut parse_notes) = result;
    notes.append(&mut parse_notes);
    if !out.status.success() {
        let message = out.first_message();
        notes.push(if gpus.is_empty() {
            format!("nvidia-smi failed with {}: {message}", out.status)
        } else {
            format!(
                "nvidia-smi exited with {} ({message}); using the {} GPU(s) it listed",
                out.status,
                gpus.len()
            )
        });
    }
    if gpus.is_empty() {
        notes.push("nvidia-smi listed no GPUs".to_string());
        return (gpus, notes);
    }

    match cuda_version(cmd) {
        Some(cuda) => gpus.iter_mut().for_each(|g| g.cuda_version = Some(cuda.clone())),
        None => notes.push("nvidia-smi did not show a CUDA version".to_string()),
    }
    tracing::debug!(gpus = gpus.len(), "nvidia-smi listed GPUs");
    (gpus, notes)
}

/// The CUDA version from `nvidia-smi --version`, else from plain `nvidia-smi`'s header.
fn cuda_version(cmd: &SmiCommand) -> Option<String> {
    let from = |args: &[&str]| run(cmd, args).ok().and_then(|out| parse_cuda_version(&out.stdout));
    from(&["--version"]).or_else(|| from(&[]))
}

#[cfg(test)]
#[path = "smi_tests.rs"]
mod tests;
