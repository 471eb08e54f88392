//! GPU inventory: what GPUs this machine has, and the host around them.
//!
//! # Layout
//!
//! - `mod.rs` (this file): [`DetectedGpu`], [`Inventory`], [`GpuSource`], [`detect`] (NVML →
//!   `nvidia-smi` → nothing) and [`group`] (identical GPUs → one [`GpuSpec`]).
//! - [`nvml`]: reading GPUs through NVML (`libnvidia-ml`, loaded at run time).
//! - [`smi`]: running `nvidia-smi` and [`parse_nvidia_smi_csv`], its pure parser.
//! - [`mod@simulate`]: simulated GPUs from a spec such as `H100-SXM-80GB:2,RTX-4090:1`.
//! - [`catalogue`]: known models, driver-name aliases, typical prices, [`canonical_model`].
//! - [`host`]: CPU cores, RAM and free disk ([`detect_host`]).
//! - [`claim`]: one node per GPU on a host (a lock file per GPU UUID).
//! - `tests.rs`, `smi_tests.rs`, `simulate_tests.rs`: unit and property tests (detection,
//!   [`group`], the shared field rules; the parser and runner; the spec syntax and UUIDs).
//! - `fixtures/`: recorded `nvidia-smi` outputs the tests parse.
//!
//! Detection never fails: anything that goes wrong becomes a line in [`Inventory::notes`].
//!
//! # Decisions
//!
//! - **Names.** [`DetectedGpu::model`] is the driver's name with a leading `NVIDIA ` removed
//!   and the rest kept as printed (`GeForce RTX 4090`, `H100 80GB HBM3`): it is what the
//!   operator sees in `nvidia-smi`. `GeForce`/`Tesla` are not stripped there, because an
//!   unknown card is best recognised by its printed name. Offers use [`canonical_model`]
//!   instead (`RTX-4090`, `H100-SXM-80GB`), which falls back to the cleaned name.
//! - **Interconnect.** A name containing `SXM` is SXM; else the catalogue's interconnect for
//!   the model (`H100 80GB HBM3` and `H200` are SXM parts though their names do not say so);
//!   else PCIe. A PCIe result becomes NVLink when NVML reports an active NVLink link
//!   (bridged cards); `nvidia-smi` output carries no link state, so there it stays PCIe.
//! - **Unknown fields.** `[N/A]`, `[Not Supported]`, `N/A` and empty fields are unknown. A
//!   GPU without a UUID, name or index is skipped with a note. Unknown VRAM is taken from the
//!   catalogue when the model is known (with a note), else the GPU is skipped: an offer
//!   cannot have zero VRAM. Unknown compute capability is likewise filled from the catalogue.
//! - **MIG.** A GPU in MIG mode is listed with `mig: true` but left out of [`group`]: its
//!   memory and SMs are split into instances, so it cannot be leased whole.

pub mod catalogue;
pub mod claim;
pub mod host;
pub mod nvml;
pub mod simulate;
pub mod smi;

pub use catalogue::{CatalogueEntry, canonical_model, lookup};
pub use host::{HostFacts, detect_host};
pub use simulate::{SimulateError, simulate};
pub use smi::parse_nvidia_smi_csv;

use gpumesh_protocol::lease::GpuUnit;
use gpumesh_protocol::{ComputeCapability, GpuSpec, Interconnect};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;

/// Where a GPU's facts came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GpuSource {
    /// NVML (`libnvidia-ml`).
    Nvml,
    /// Parsed `nvidia-smi --query-gpu` output.
    NvidiaSmi,
    /// Made up from a simulation spec.
    Simulated,
}

impl GpuSource {
    /// The JSON and display name: `nvml`, `nvidia-smi`, `simulated`.
    pub fn as_str(self) -> &'static str {
        match self {
            GpuSource::Nvml => "nvml",
            GpuSource::NvidiaSmi => "nvidia-smi",
            GpuSource::Simulated => "simulated",
        }
    }
}

impl fmt::Display for GpuSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One physical GPU found on this machine (or simulated).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetectedGpu {
    /// The driver's device index (`CUDA_VISIBLE_DEVICES`, `--gpus device=`).
    pub index: u32,
    /// The driver's UUID, e.g. `GPU-5b3c1a2e-…`.
    pub uuid: String,
    /// Maker, lowercase: `nvidia`, `amd`.
    pub vendor: String,
    /// The driver's name without a leading `NVIDIA ` (`H100 80GB HBM3`), or the catalogue
    /// model for simulated GPUs.
    pub model: String,
    /// Total memory, MiB, as the driver reports it.
    pub vram_mib: u32,
    pub compute_capability: Option<ComputeCapability>,
    pub driver_version: Option<String>,
    /// The CUDA version the driver supports, e.g. `12.4`.
    pub cuda_version: Option<String>,
    pub interconnect: Interconnect,
    pub source: GpuSource,
    /// Whether MIG mode is on (then the GPU cannot be leased whole).
    pub mig: bool,
}

/// What [`detect`] found, and what it tried on the way.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub gpus: Vec<DetectedGpu>,
    /// The backend the GPUs came from; `None` when none were found.
    pub source: Option<GpuSource>,
    /// What was tried and what went wrong, for people (`NVML not available: …`).
    pub notes: Vec<String>,
}

impl Inventory {
    /// An inventory of simulated GPUs.
    pub fn simulated(gpus: Vec<DetectedGpu>) -> Inventory {
        let notes = vec![format!("{} simulated GPU(s)", gpus.len())];
        Inventory { gpus, source: Some(GpuSource::Simulated), notes }
    }
}

/// Finds this machine's GPUs: NVML first, then `nvidia-smi`, else none. Never fails and never
/// panics; everything tried is recorded in [`Inventory::notes`].
pub fn detect() -> Inventory {
    let _span = tracing::debug_span!("inventory_detect").entered();
    let mut notes = Vec::new();

    match nvml::detect() {
        Ok((gpus, mut nvml_notes)) => {
            notes.append(&mut nvml_notes);
            if !gpus.is_empty() {
                tracing::info!(source = "nvml", gpus = gpus.len(), "GPU inventory detected");
                return Inventory { gpus, source: Some(GpuSource::Nvml), notes };
            }
            notes.push("NVML found no usable GPUs".to_string());
        }
        Err(reason) => notes.push(format!("NVML not available: {reason}")),
    }

    let (gpus, mut smi_notes) = smi::detect();
    notes.append(&mut smi_notes);
    if !gpus.is_empty() {
        tracing::info!(source = "nvidia-smi", gpus = gpus.len(), "GPU inventory detected");
        return Inventory { gpus, source: Some(GpuSource::NvidiaSmi), notes };
    }

    notes.push("no GPUs found".to_string());
    tracing::info!(notes = ?notes, "no GPUs detected");
    Inventory { gpus: Vec::new(), source: None, notes }
}

/// Groups identical GPUs into one [`GpuSpec`] each, with their units.
///
/// GPUs are identical when vendor, canonical model (compared case-insensitively, as
/// [`GpuSpec::group_key`] does), VRAM, interconnect and compute capability agree. Groups come
/// in the order of their lowest device index, and units by index, whatever the input order.
/// The driver and CUDA versions of a group are those of its lowest-index GPU (one driver
/// serves a machine). A UUID listed twice is used once.
///
/// MIG-enabled GPUs are left out: their memory and compute are carved into instances that
/// other tenants may hold, so the GPU cannot be leased whole.
pub fn group(gpus: &[DetectedGpu]) -> Vec<(GpuSpec, Vec<GpuUnit>)> {
    let mut sorted: Vec<&DetectedGpu> = gpus.iter().filter(|g| !g.mig).collect();
    sorted.sort_by(|a, b| (a.index, &a.uuid).cmp(&(b.index, &b.uuid)));

    type Key = (String, String, u32, Interconnect, Option<ComputeCapability>);
    let mut groups: Vec<(Key, GpuSpec, Vec<GpuUnit>)> = Vec::new();
    let mut seen = HashSet::new();
    for gpu in sorted {
        if !seen.insert(gpu.uuid.as_str()) {
            tracing::warn!(uuid = %gpu.uuid, index = gpu.index, "GPU listed twice; using it once");
            continue;
        }
        let model = canonical_model(&gpu.model);
        let vendor = gpu.vendor.to_ascii_lowercase();
        let key: Key = (
            vendor.clone(),
            model.to_ascii_lowercase(),
            gpu.vram_mib,
            gpu.interconnect,
            gpu.compute_capability,
        );
        let unit = GpuUnit { uuid: gpu.uuid.clone(), index: gpu.index };
        match groups.iter_mut().find(|(k, _, _)| *k == key) {
            Some((_, _, units)) => units.push(unit),
            None => {
                let spec = GpuSpec {
                    vendor,
                    model,
                    vram_mib: gpu.vram_mib,
                    compute_capability: gpu.compute_capability,
                    interconnect: gpu.interconnect,
                    cuda_version: gpu.cuda_version.clone(),
                    driver_version: gpu.driver_version.clone(),
                };
                groups.push((key, spec, vec![unit]));
            }
        }
    }
    groups.into_iter().map(|(_, spec, units)| (spec, units)).collect()
}

/// Whether a driver field means "unknown": empty, `N/A`, `[N/A]`, `[Not Supported]`, or any
/// other bracketed placeholder (`[Unknown Error]`, `[Insufficient Permissions]`, …).
pub(crate) fn is_unknown(field: &str) -> bool {
    let f = field.trim();
    f.is_empty()
        || f.eq_ignore_ascii_case("n/a")
        || f.eq_ignore_ascii_case("not supported")
        || (f.starts_with('[') && f.ends_with(']'))
}

/// A field's trimmed text, or `None` when it is unknown.
pub(crate) fn known(field: &str) -> Option<&str> {
    if is_unknown(field) { None } else { Some(field.trim()) }
}

/// One GPU as a backend read it, before the shared rules in [`finish`] apply.
#[derive(Clone, Debug, Default)]
pub(crate) struct RawGpu {
    pub index: u32,
    pub uuid: Option<String>,
    /// The driver's name, uncleaned.
    pub name: Option<String>,
    pub vram_mib: Option<u32>,
    pub compute_capability: Option<ComputeCapability>,
    pub driver_version: Option<String>,
    pub cuda_version: Option<String>,
    pub mig: bool,
    /// NVML saw at least one active NVLink link.
    pub nvlink_active: bool,
}

/// The interconnect heuristic described in the module docs.
pub(crate) fn interconnect_for(name: &str, nvlink_active: bool) -> Interconnect {
    let guess = if name.to_ascii_lowercase().contains("sxm") {
        Interconnect::Sxm
    } else {
        lookup(name).map_or(Interconnect::Pcie, |e| e.interconnect)
    };
    if guess == Interconnect::Pcie && nvlink_active { Interconnect::Nvlink } else { guess }
}

/// Applies the shared rules (required fields, catalogue fill-ins, interconnect, duplicate
/// UUIDs) to what a backend read. `rows` pairs each GPU with where it came from
/// (`nvidia-smi line 3`), used in notes.
pub(crate) fn finish(
    rows: Vec<(String, RawGpu)>,
    source: GpuSource,
    notes: &mut Vec<String>,
) -> Vec<DetectedGpu> {
    let mut out: Vec<DetectedGpu> = Vec::with_capacity(rows.len());
    for (origin, raw) in rows {
        let Some(uuid) = raw.uuid.filter(|u| !u.trim().is_empty()) else {
            notes.push(format!("{origin}: skipped GPU {}: the driver reported no UUID", raw.index));
            continue;
        };
        let uuid = uuid.trim().to_string();
        let Some(name) = raw.name.filter(|n| !n.trim().is_empty()) else {
            notes.push(format!("{origin}: skipped GPU {} ({uuid}): the driver reported no name", raw.index));
            continue;
        };
        if let Some(first) = out.iter().find(|g| g.uuid == uuid) {
            notes.push(format!(
                "{origin}: skipped GPU {}: UUID {uuid} was already listed as GPU {}",
                raw.index, first.index
            ));
            continue;
        }
        let model = catalogue::clean_driver_name(&name);
        let entry = lookup(&model);
        let mut filled = Vec::new();
        let vram_mib = match (raw.vram_mib.filter(|v| *v > 0), entry) {
            (Some(v), _) => v,
            (None, Some(e)) => {
                filled.push(("its VRAM", format!("{} MiB", e.vram_mib)));
                e.vram_mib
            }
            (None, None) => {
                notes.push(format!(
                    "{origin}: skipped GPU {} ({uuid}, {model}): its memory size is unknown and \
                     `{model}` is not in the catalogue; an offer needs the GPU's VRAM",
                    raw.index
                ));
                continue;
            }
        };
        let compute_capability = match (raw.compute_capability, entry.and_then(|e| e.cc)) {
            (Some(cc), _) => Some(cc),
            (None, Some(cc)) => {
                filled.push(("its compute capability", cc.to_string()));
                Some(cc)
            }
            (None, None) => None,
        };
        if let (false, Some(e)) = (filled.is_empty(), entry) {
            let what: Vec<&str> = filled.iter().map(|(w, _)| *w).collect();
            let values: Vec<&str> = filled.iter().map(|(_, v)| v.as_str()).collect();
            notes.push(format!(
                "{origin}: GPU {} ({uuid}) did not report {}; using the catalogue's {} for {}",
                raw.index,
                what.join(" or "),
                values.join(" and "),
                e.model
            ));
        }
        out.push(DetectedGpu {
            index: raw.index,
            uuid,
            vendor: "nvidia".to_string(),
            interconnect: interconnect_for(&model, raw.nvlink_active),
            model,
            vram_mib,
            compute_capability,
            driver_version: raw.driver_version.filter(|v| !is_unknown(v)),
            cuda_version: raw.cuda_version.filter(|v| !is_unknown(v)),
            source,
            mig: raw.mig,
        });
    }
    out
}

#[cfg(test)]
mod tests;
