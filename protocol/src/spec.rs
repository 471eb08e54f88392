//! What is offered: [`GpuSpec`] (one GPU model), [`HostSpec`] (the machine around it),
//! [`Interconnect`], [`ComputeCapability`].

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How the GPUs of a group are connected to each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interconnect {
    /// Plain PCIe cards.
    Pcie,
    /// SXM modules (HGX boards).
    Sxm,
    /// PCIe cards bridged with NVLink.
    Nvlink,
}

impl Interconnect {
    /// Every variant, in wire order.
    pub const ALL: [Interconnect; 3] = [Interconnect::Pcie, Interconnect::Sxm, Interconnect::Nvlink];

    /// The wire and query name.
    pub fn as_str(self) -> &'static str {
        match self {
            Interconnect::Pcie => "pcie",
            Interconnect::Sxm => "sxm",
            Interconnect::Nvlink => "nvlink",
        }
    }
}

impl fmt::Display for Interconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Interconnect {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Interconnect::ALL
            .into_iter()
            .find(|i| i.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("`{s}` is not an interconnect; expected one of pcie, sxm, nvlink"))
    }
}

/// A CUDA compute capability such as 8.9 (Ada) or 9.0 (Hopper). On the wire: a CBOR array
/// `[major, minor]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ComputeCapability(pub u8, pub u8);

impl fmt::Display for ComputeCapability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

impl FromStr for ComputeCapability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || format!("`{s}` is not a compute capability; write MAJOR.MINOR, e.g. 8.9");
        let (maj, min) = s.split_once('.').unwrap_or((s, "0"));
        if maj.is_empty() || min.is_empty() || min.len() > 2 {
            return Err(err());
        }
        let maj: u8 = maj.parse().map_err(|_| err())?;
        let min: u8 = min.parse().map_err(|_| err())?;
        Ok(ComputeCapability(maj, min))
    }
}

/// One GPU model as offered. Every GPU of an offer has this spec.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuSpec {
    /// Maker, lowercase: `nvidia`, `amd`, `intel`.
    pub vendor: String,
    /// Model name as printed by the catalogue or driver, e.g. `H100-SXM-80GB`, `RTX-4090`.
    pub model: String,
    /// Memory per GPU in MiB as the driver reports it.
    pub vram_mib: u32,
    /// CUDA compute capability, when known.
    pub compute_capability: Option<ComputeCapability>,
    /// How the GPUs are connected.
    pub interconnect: Interconnect,
    /// CUDA version the driver supports, e.g. `12.4`, when known.
    pub cuda_version: Option<String>,
    /// Driver version, e.g. `550.54.15`, when known.
    pub driver_version: Option<String>,
}

impl GpuSpec {
    /// The identity of a GPU group on one provider: `lowercase(model)|vram_mib|interconnect`.
    /// It feeds [`crate::OfferId::derive`], so an offer keeps its id when its price or free
    /// count changes.
    pub fn group_key(&self) -> String {
        format!("{}|{}|{}", self.model.to_ascii_lowercase(), self.vram_mib, self.interconnect)
    }

    /// VRAM in whole GiB, rounded to nearest, the way cards are sold (81559 MiB → 80).
    pub fn vram_gib_rounded(&self) -> u32 {
        ((self.vram_mib as u64 + 512) / 1024) as u32
    }
}

/// The machine the GPUs sit in.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    /// Logical CPU cores available to a lease.
    pub cpu_cores: u32,
    /// RAM available to a lease, MiB.
    pub ram_mib: u64,
    /// Disk available to a lease, GiB.
    pub disk_gib: u64,
    /// Where the machine is: an ISO-3166 alpha-2 country (`US`, `DE`) or a short region code
    /// (`us-east`, `eu-west`). 1–16 characters of `[A-Za-z0-9-]`.
    pub region: String,
}

/// Checks a region code: 1–16 ASCII letters, digits or `-`, not starting or ending with `-`.
pub fn is_valid_region(region: &str) -> bool {
    (1..=16).contains(&region.len())
        && region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !region.starts_with('-')
        && !region.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compute_capability_parses_and_prints() {
        assert_eq!("8.9".parse::<ComputeCapability>().unwrap(), ComputeCapability(8, 9));
        assert_eq!("9".parse::<ComputeCapability>().unwrap(), ComputeCapability(9, 0));
        assert_eq!(ComputeCapability(10, 0).to_string(), "10.0");
        assert!("8.".parse::<ComputeCapability>().is_err());
        assert!("x.1".parse::<ComputeCapability>().is_err());
    }

    #[test]
    fn interconnect_parses_case_insensitively() {
        assert_eq!("SXM".parse::<Interconnect>().unwrap(), Interconnect::Sxm);
        assert!("infiniband".parse::<Interconnect>().is_err());
    }

    #[test]
    fn vram_rounds_like_marketing_sizes() {
        let mut g = GpuSpec {
            vendor: "nvidia".into(),
            model: "H100".into(),
            vram_mib: 81559,
            compute_capability: None,
            interconnect: Interconnect::Sxm,
            cuda_version: None,
            driver_version: None,
        };
        assert_eq!(g.vram_gib_rounded(), 80);
        g.vram_mib = 24564;
        assert_eq!(g.vram_gib_rounded(), 24);
    }

    #[test]
    fn regions() {
        assert!(is_valid_region("US"));
        assert!(is_valid_region("eu-west"));
        assert!(!is_valid_region(""));
        assert!(!is_valid_region("-us"));
        assert!(!is_valid_region("us west"));
        assert!(!is_valid_region("a-very-long-region-code"));
    }
}
