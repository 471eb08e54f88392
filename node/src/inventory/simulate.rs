//! Simulated GPUs, for tests, demos and testnets on machines without GPUs.
//!
//! A spec lists `MODEL[:COUNT[:VRAM_GIB]]` entries, comma separated:
//! `H100-SXM-80GB:2,RTX-4090:1`, `MyCard:1:48`. COUNT defaults to 1 and must be 1..=64.
//! A catalogue model (any spelling [`lookup`] accepts) takes its VRAM, compute capability and
//! interconnect from the catalogue, VRAM_GIB overriding the VRAM; any other model needs
//! VRAM_GIB and gets no compute capability and PCIe (SXM if its name says so).
//!
//! UUIDs are stable: `GPU-` followed by the first 16 bytes of
//! `sha256("gpumesh-sim" || node_seed || model || index as 4 big-endian bytes)` in UUID form,
//! where `model` is the canonical model name, so one node seed and spec always give the same
//! UUIDs and different seeds give different ones. Indices run from 0 across the whole spec.

use super::catalogue::{self, lookup};
use super::{DetectedGpu, GpuSource, interconnect_for};
use gpumesh_protocol::offer::limits::MODEL_LEN;
use sha2::{Digest, Sha256};

/// The most GPUs one entry may simulate.
pub const MAX_COUNT: u64 = 64;
/// The most GPUs one spec may simulate in all (the most one offer may carry).
pub const MAX_TOTAL: u64 = gpumesh_protocol::offer::limits::GPUS as u64;
/// The largest VRAM_GIB accepted.
pub const MAX_VRAM_GIB: u64 = 4096;
/// Domain tag hashed in front of every simulated UUID.
const UUID_DOMAIN: &[u8] = b"gpumesh-sim";
const SYNTAX: &str = "syntax MODEL[:COUNT[:VRAM_GIB]], e.g. H100-SXM-80GB:2";

/// Why a simulation spec was refused. Each message says what is wrong and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SimulateError {
    #[error(
        "the simulation spec is empty; list GPUs as comma-separated MODEL[:COUNT[:VRAM_GIB]] \
         entries, e.g. H100-SXM-80GB:2,RTX-4090:1"
    )]
    Empty,
    #[error(
        "entry {position} of `{spec}` is empty (a stray comma?); separate entries with one \
         comma ({SYNTAX})"
    )]
    EmptyEntry { spec: String, position: usize },
    #[error("`{entry}` has {parts} `:`-separated parts but at most 3 are allowed ({SYNTAX})")]
    TooManyParts { entry: String, parts: usize },
    #[error("`{entry}` has no model name before the first `:` ({SYNTAX})")]
    EmptyModel { entry: String },
    #[error(
        "`{entry}` names a model of {len} bytes; model names may be at most {MODEL_LEN} bytes \
         ({SYNTAX})"
    )]
    ModelTooLong { entry: String, len: usize },
    #[error("`{entry}` has a count of `{count}`, which is not a number; COUNT must be 1..=64 ({SYNTAX})")]
    BadCount { entry: String, count: String },
    #[error("`{entry}` has a count of {count}; COUNT must be 1..=64 ({SYNTAX})")]
    CountOutOfRange { entry: String, count: u64 },
    #[error(
        "`{entry}` has a VRAM of `{vram}`; VRAM_GIB must be a whole number of GiB from 1 to \
         {MAX_VRAM_GIB}, e.g. MyCard:1:48 ({SYNTAX})"
    )]
    BadVram { entry: String, vram: String },
    #[error(
        "the spec simulates {total} GPUs but at most {MAX_TOTAL} are allowed; lower the counts \
         ({SYNTAX})"
    )]
    TooManyGpus { total: u64 },
    #[error(
        "`{model}` is not in the catalogue, so its VRAM is unknown; give it as \
         `{model}:COUNT:VRAM_GIB` (e.g. `{model}:1:48`) or use a known model: {known}"
    )]
    UnknownModel { model: String, known: String },
}

/// One parsed entry of a spec.
struct Entry<'a> {
    model: &'a str,
    count: u32,
    vram_gib: Option<u32>,
}

fn parse_entry(entry: &str) -> Result<Entry<'_>, SimulateError> {
    let parts: Vec<&str> = entry.split(':').map(str::trim).collect();
    if parts.len() > 3 {
        return Err(SimulateError::TooManyParts { entry: entry.to_string(), parts: parts.len() });
    }
    let model = parts[0];
    if model.is_empty() {
        return Err(SimulateError::EmptyModel { entry: entry.to_string() });
    }
    if model.len() > MODEL_LEN {
        return Err(SimulateError::ModelTooLong { entry: entry.to_string(), len: model.len() });
    }
    let count = match parts.get(1) {
        None => 1,
        Some(text) => {
            let count: u64 = text.parse().map_err(|_| SimulateError::BadCount {
                entry: entry.to_string(),
                count: (*text).to_string(),
            })?;
            match u32::try_from(count) {
                Ok(c) if (1..=MAX_COUNT).contains(&count) => c,
                _ => {
                    return Err(SimulateError::CountOutOfRange { entry: entry.to_string(), count });
                }
            }
        }
    };
    let vram_gib = match parts.get(2) {
        None => None,
        Some(text) => {
            let bad = || SimulateError::BadVram { entry: entry.to_string(), vram: (*text).to_string() };
            let gib: u64 = text.parse().map_err(|_| bad())?;
            if !(1..=MAX_VRAM_GIB).contains(&gib) {
                return Err(bad());
            }
            Some(u32::try_from(gib).map_err(|_| bad())?)
        }
    };
    Ok(Entry { model, count, vram_gib })
}

/// The stable simulated UUID of GPU `index` of `model` on the node with `node_seed`.
pub fn simulated_uuid(node_seed: &[u8], model: &str, index: u32) -> String {
    let mut hasher = Sha256::new();
    hasher.update(UUID_DOMAIN);
    hasher.update(node_seed);
    hasher.update(model.as_bytes());
    hasher.update(index.to_be_bytes());
    let digest = hasher.finalize();
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("GPU-{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// Makes the GPUs a spec describes; see the module docs for the syntax and the UUIDs.
pub fn simulate(spec: &str, node_seed: &[u8]) -> Result<Vec<DetectedGpu>, SimulateError> {
    if spec.trim().is_empty() {
        return Err(SimulateError::Empty);
    }
    let mut entries = Vec::new();
    for (i, raw) in spec.split(',').enumerate() {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(SimulateError::EmptyEntry { spec: spec.trim().to_string(), position: i + 1 });
        }
        entries.push(parse_entry(raw)?);
    }
    let total: u64 = entries.iter().map(|e| u64::from(e.count)).sum();
    if total > MAX_TOTAL {
        return Err(SimulateError::TooManyGpus { total });
    }

    let mut gpus = Vec::new();
    let mut index: u32 = 0;
    for entry in entries {
        let known = lookup(entry.model);
        let (model, vendor, cc, interconnect) = match known {
            Some(e) => (e.model.to_string(), e.vendor, e.cc, e.interconnect),
            None => (entry.model.to_string(), "nvidia", None, interconnect_for(entry.model, false)),
        };
        let vram_mib = match (entry.vram_gib, known) {
            (Some(gib), _) => gib.saturating_mul(1024),
            (None, Some(e)) => e.vram_mib,
            (None, None) => {
                return Err(SimulateError::UnknownModel {
                    model: entry.model.to_string(),
                    known: catalogue::known_models(),
                });
            }
        };
        for _ in 0..entry.count {
            gpus.push(DetectedGpu {
                index,
                uuid: simulated_uuid(node_seed, &model, index),
                vendor: vendor.to_string(),
                model: model.clone(),
                vram_mib,
                compute_capability: cc,
                driver_version: None,
                cuda_version: None,
                interconnect,
                source: GpuSource::Simulated,
                mig: false,
            });
            index += 1;
        }
    }
    tracing::debug!(spec, gpus = gpus.len(), "simulated GPUs");
    Ok(gpus)
}

#[cfg(test)]
#[path = "simulate_tests.rs"]
mod tests;
