//! The GPU catalogue: known models with their memory, compute capability, interconnect and a
//! typical 2026 market price, plus the names drivers print for them.
//!
//! [`lookup`] matches a name case-insensitively and ignores `-`, `_` and spaces, so
//! `h100-sxm-80gb`, `H100 SXM 80GB` and `h100sxm80gb` all find `H100-SXM-80GB`. A leading vendor
//! word (`NVIDIA`, `AMD`) and then a leading NVIDIA brand word (`GeForce`, `Tesla`, `Quadro`)
//! are tried off as well, so `NVIDIA GeForce RTX 4090` finds `RTX-4090` and
//! `Tesla V100-SXM2-32GB` finds `V100-SXM2-32GB`.
//!
//! VRAM figures are what the driver reports (`nvidia-smi --query-gpu=memory.total`, MiB), not
//! the marketing size. Short aliases (`H100`, `A100`, `H200`) pick the form most rented.

use gpumesh_protocol::{ComputeCapability, Interconnect};

/// One known GPU model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CatalogueEntry {
    /// Canonical model name, e.g. `H100-SXM-80GB`. Used as the offer's model.
    pub model: &'static str,
    /// Maker, lowercase: `nvidia`, `amd`.
    pub vendor: &'static str,
    /// Other names for the same card, including the names drivers print (without the
    /// leading `NVIDIA `), e.g. `H100 80GB HBM3`.
    pub aliases: &'static [&'static str],
    /// Memory as the driver reports it, MiB.
    pub vram_mib: u32,
    /// CUDA compute capability; `None` for non-CUDA GPUs (AMD).
    pub cc: Option<ComputeCapability>,
    /// How these GPUs are usually connected to each other in one machine.
    pub interconnect: Interconnect,
    /// Typical market price in micro-USD per GPU-hour (early 2026), a starting point for a
    /// provider's own price.
    pub typical_price_micros: u64,
}

const fn cc(major: u8, minor: u8) -> Option<ComputeCapability> {
    Some(ComputeCapability(major, minor))
}

/// Every known model, newest data-centre parts first.
pub static CATALOGUE: &[CatalogueEntry] = &[
    CatalogueEntry {
        model: "B200-SXM-180GB",
        vendor: "nvidia",
        aliases: &["B200", "NVIDIA B200", "B200 SXM"],
        vram_mib: 183_359,
        cc: cc(10, 0),
        interconnect: Interconnect::Sxm,
        typical_price_micros: 4_250_000,
    },
    CatalogueEntry {
        model: "H200-SXM-141GB",
        vendor: "nvidia",
        aliases: &["H200", "H200 SXM"],
        vram_mib: 143_771,
        cc: cc(9, 0),
        interconnect: Interconnect::Sxm,
        typical_price_micros: 3_000_000,
    },
    CatalogueEntry {
        model: "H200-NVL-141GB",
        vendor: "nvidia",
        aliases: &["H200 NVL"],
        vram_mib: 143_771,
        cc: cc(9, 0),
        interconnect: Interconnect::Pcie,
        typical_price_micros: 2_700_000,
    },
    CatalogueEntry {
        model: "H100-SXM-80GB",
        vendor: "nvidia",
        aliases: &["H100", "H100 80GB HBM3", "H100 SXM5 80GB", "H100 SXM"],
        vram_mib: 81_559,
        cc: cc(9, 0),
        interconnect: Interconnect::Sxm,
        typical_price_micros: 2_200_000,
    },
    CatalogueEntry {
        model: "H100-NVL-94GB",
        vendor: "nvidia",
        aliases: &["H100 NVL"],
        vram_mib: 95_830,
        cc: cc(9, 0),
        interconnect: Interconnect::Pcie,
        typical_price_micros: 2_000_000,
    },
    CatalogueEntry {
        model: "H100-PCIE-80GB",
        vendor: "nvidia",
        aliases: &["H100 PCIe", "H100 80GB PCIe"],
        vram_mib: 81_559,
        cc: cc(9, 0),
        interconnect: Interconnect::Pcie,
        typical_price_micros: 1_900_000,
    },
    CatalogueEntry {
        model: "A100-SXM-80GB",
        vendor: "nvidia",
        aliases: &["A100", "A100-SXM4-80GB", "A100 80GB SXM"],
        vram_mib: 81_920,
        cc: cc(8, 0),
        interconnect: Interconnect::Sxm,
        typical_price_micros: 1_300_000,
    },
    CatalogueEntry {
        model: "A100-PCIE-80GB",
        vendor: "nvidia",
        aliases: &["A100 80GB PCIe"],
        vram_mib: 81_920,
        cc: cc(8, 0),
        interconnect: Interconnect::Pcie,
        typical_price_micros: 1_150_000,
    },
    CatalogueEntry {
        model: "A100-SXM-40GB",
        vendor: "nvidia",
        aliases: &["A100-SXM4-40GB"],
        vram_mib: 40_960,
        cc: cc(8, 0),
        interconnect: Interconnect::Sxm,
        typical_price_micros: 1_000_000,
    },
    CatalogueEntry {
        model: "A100-PCIE-40GB",
        vendor: "nvidia",
        aliases: &["A100 40GB PCIe"],
        vram_mib: 40_960,
        cc: cc(8, 0),
        interconnect: Interconnect::Pcie,
        typical_price_micros: 900_000,
    },
    CatalogueEntry {
        model: "L40S",
        vendor: "nvidia",
        aliases: &[],
        vram_mib: 46_068,
        cc: cc(8, 9),
        interconnect: Interconnect::Pcie,
        typical_price_micros: 800_000,
    },
    CatalogueEntry {
        model: "L40",
        vendor: "nvidia",
        aliases: &[],
        vram_mib: 46_068,
        cc: cc(8, 9),
        interconnect: Interconnect::Pcie,
        typical_price_micros: 650_000,
    },
    CatalogueEntry {
        model: "L4",
        vendor: "nvidia",
        aliases: &[],
        vram_mib: 23_034,
        cc: cc(8, 9),
        interconnect: Interconnect::Pcie,
        typical_price_micros: 320_000,
    },
    CatalogueEntry {
        model: "RTX-6000-ADA",
        vendor: "nvidia",
        aliases: &["RTX 6000 Ada Generation"],
        vram_mib: 49_140,
        cc: cc(8, 9),
        interconnect: Interconnect::Pcie,
        typical_price_micros: 750_000,
    },
    CatalogueEntry {
        model: "RTX-A6000",
        vendor: "nvidia",
        aliases: &["A6000"],
        vram_mib: 49_140,
        cc: cc(8, 6),
        interconnect: Interconnect::Pcie,
        typical_price_micros: 450_000,
    },
    CatalogueEntry {
        model: "A10",
        vendor: "nvidia",
        aliases: &[],
        vram_mib: 23_028,
        cc: cc(8, 6),
        interconnect: Interconnect::Pcie,
        typical_price_micros: 280_000,
    },
    CatalogueEntry {
        model: "RTX-5090",
        vendor: "nvidia",
        aliases: &["GeForce RTX 5090"],
        vram_mib: 32_607,
        cc: cc(12, 0),
        interconnect: Interconnect::Pcie,
        typical_price_micros: 650_000,
    },
    CatalogueEntry {
        model: "RTX-4090",
        vendor: "nvidia",
        aliases: &["GeForce RTX 4090"],
        vram_mib: 24_564,
        cc: cc(8, 9),
        interconnect: Interconnect::Pcie,
        typical_price_micros: 350_000,
    },
    CatalogueEntry {
        model: "RTX-4080",
        vendor: "nvidia",
        aliases: &["GeForce RTX 4080"],
        vram_mib: 16_376,
        cc: cc(8, 9),
        interconnect: Interconnect::Pcie,
        typical_price_micros: 200_000,
    },
    CatalogueEntry {
        model: "RTX-3090",
        vendor: "nvidia",
        aliases: &["GeForce RTX 3090"],
        vram_mib: 24_576,
        cc: cc(8, 6),
        interconnect: Interconnect::Pcie,
        typical_price_micros: 220_000,
    },
    CatalogueEntry {
        model: "V100-SXM2-32GB",
        vendor: "nvidia",
        aliases: &["V100", "Tesla V100-SXM2-32GB"],
        vram_mib: 32_768,
        cc: cc(7, 0),
        interconnect: Interconnect::Sxm,
        typical_price_micros: 250_000,
    },
    CatalogueEntry {
        model: "T4",
        vendor: "nvidia",
        aliases: &["Tesla T4"],
        vram_mib: 15_360,
        cc: cc(7, 5),
        interconnect: Interconnect::Pcie,
        typical_price_micros: 150_000,
    },
    CatalogueEntry {
        model: "MI300X",
        vendor: "amd",
        // OAM modules on an Infinity Fabric baseboard: the closest wire value is `sxm`.
        aliases: &["AMD Instinct MI300X", "Instinct MI300X", "MI300X OAM"],
        vram_mib: 196_608,
        cc: None,
        interconnect: Interconnect::Sxm,
        typical_price_micros: 2_000_000,
    },
];

/// Vendor words tried off the front of a name, after normalisation.
const VENDOR_PREFIXES: &[&str] = &["nvidia", "amd"];
/// NVIDIA brand words tried off the front of a name (after any vendor word).
const BRAND_PREFIXES: &[&str] = &["geforce", "tesla", "quadro"];

/// Lowercases ASCII and drops `-`, `_` and whitespace: the form names are compared in.
pub fn normalize(name: &str) -> String {
    name.chars()
        .filter(|c| !matches!(c, '-' | '_') && !c.is_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn find_exact(key: &str) -> Option<&'static CatalogueEntry> {
    if key.is_empty() {
        return None;
    }
    CATALOGUE.iter().find(|e| normalize(e.model) == key || e.aliases.iter().any(|a| normalize(a) == key))
}

/// Finds a model by its canonical name, an alias or a driver name; see the module docs for
/// the matching rules.
pub fn lookup(name: &str) -> Option<&'static CatalogueEntry> {
    let key = normalize(name);
    if let Some(e) = find_exact(&key) {
        return Some(e);
    }
    let unvendored = VENDOR_PREFIXES.iter().find_map(|p| key.strip_prefix(p)).unwrap_or(&key);
    if let Some(e) = find_exact(unvendored) {
        return Some(e);
    }
    BRAND_PREFIXES.iter().find_map(|p| unvendored.strip_prefix(p)).and_then(find_exact)
}

/// Removes a leading `NVIDIA ` from a driver's GPU name and trims it; the rest stays as
/// printed (`NVIDIA GeForce RTX 4090` → `GeForce RTX 4090`). A name that is only `NVIDIA`
/// is kept.
pub fn clean_driver_name(driver_name: &str) -> String {
    let name = driver_name.trim();
    match name.get(..7) {
        Some(head) if head.eq_ignore_ascii_case("nvidia ") && !name[7..].trim().is_empty() => {
            name[7..].trim().to_string()
        }
        _ => name.to_string(),
    }
}

/// The name to show and offer a GPU under: the catalogue's model when the driver name is
/// known (`NVIDIA H100 80GB HBM3` → `H100-SXM-80GB`), else the cleaned driver name
/// (`NVIDIA GeForce GTX 1080 Ti` → `GeForce GTX 1080 Ti`).
pub fn canonical_model(driver_name: &str) -> String {
    match lookup(driver_name) {
        Some(entry) => entry.model.to_string(),
        None => clean_driver_name(driver_name),
    }
}

/// The canonical names of every catalogue entry, comma separated, for error messages.
pub fn known_models() -> String {
    CATALOGUE.iter().map(|e| e.model).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn lookup_ignores_case_dashes_underscores_and_spaces() {
        for name in ["h100-sxm-80gb", "H100 SXM 80GB", "h100sxm80gb", "H100_SXM_80GB"] {
            assert_eq!(lookup(name).map(|e| e.model), Some("H100-SXM-80GB"), "{name}");
        }
    }

    #[test]
    fn lookup_finds_driver_names() {
        let cases = [
            ("NVIDIA H100 80GB HBM3", "H100-SXM-80GB"),
            ("H100 80GB HBM3", "H100-SXM-80GB"),
            ("NVIDIA H100 PCIe", "H100-PCIE-80GB"),
            ("NVIDIA H100 NVL", "H100-NVL-94GB"),
            ("NVIDIA H200", "H200-SXM-141GB"),
            ("NVIDIA H200 NVL", "H200-NVL-141GB"),
            ("NVIDIA A100-SXM4-80GB", "A100-SXM-80GB"),
            ("NVIDIA A100-SXM4-40GB", "A100-SXM-40GB"),
            ("NVIDIA A100 80GB PCIe", "A100-PCIE-80GB"),
            ("NVIDIA A100-PCIE-40GB", "A100-PCIE-40GB"),
            ("NVIDIA GeForce RTX 4090", "RTX-4090"),
            ("GeForce RTX 4090", "RTX-4090"),
            ("NVIDIA GeForce RTX 3090", "RTX-3090"),
            ("NVIDIA GeForce RTX 5090", "RTX-5090"),
            ("NVIDIA RTX A6000", "RTX-A6000"),
            ("A6000", "RTX-A6000"),
            ("NVIDIA RTX 6000 Ada Generation", "RTX-6000-ADA"),
            ("NVIDIA L40S", "L40S"),
            ("NVIDIA L40", "L40"),
            ("NVIDIA L4", "L4"),
            ("NVIDIA A10", "A10"),
            ("Tesla T4", "T4"),
            ("Tesla V100-SXM2-32GB", "V100-SXM2-32GB"),
            ("AMD Instinct MI300X", "MI300X"),
            ("NVIDIA B200", "B200-SXM-180GB"),
        ];
        for (name, model) in cases {
            assert_eq!(lookup(name).map(|e| e.model), Some(model), "{name}");
        }
    }

    #[test]
    fn lookup_misses_unknown_and_empty_names() {
        for name in ["", "   ", "NVIDIA", "GeForce GTX 1080 Ti", "A1000", "H1000", "Tesla"] {
            assert_eq!(lookup(name), None, "{name:?}");
        }
    }

    #[test]
    fn every_name_is_unique_across_the_catalogue() {
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for e in CATALOGUE {
            for name in std::iter::once(&e.model).chain(e.aliases.iter()) {
                let key = normalize(name);
                if let Some(other) = seen.insert(key.clone(), e.model) {
                    panic!("`{name}` ({key}) names both {other} and {}", e.model);
                }
            }
        }
    }

    #[test]
    fn every_entry_is_sane() {
        for e in CATALOGUE {
            assert!(e.vram_mib >= 8 * 1024, "{}", e.model);
            assert!(e.typical_price_micros > 0, "{}", e.model);
            assert_eq!(e.vendor, e.vendor.to_ascii_lowercase(), "{}", e.model);
            assert_eq!(e.cc.is_none(), e.vendor != "nvidia", "{}", e.model);
            assert_eq!(lookup(e.model), Some(e), "{} must find itself", e.model);
        }
    }

    #[test]
    fn prices_order_like_the_market() {
        let price = |m: &str| lookup(m).map(|e| e.typical_price_micros).unwrap_or(0);
        assert!(price("H200-SXM-141GB") > price("H100-SXM-80GB"));
        assert!(price("H100-SXM-80GB") > price("A100-SXM-80GB"));
        assert!(price("A100-SXM-80GB") > price("L40S"));
        assert!(price("RTX-4090") > price("RTX-3090"));
        assert!(price("RTX-3090") > price("T4"));
        assert!((2_000_000..=2_500_000).contains(&price("H100-SXM-80GB")));
    }

    #[test]
    fn canonical_model_prefers_the_catalogue() {
        assert_eq!(canonical_model("NVIDIA H100 80GB HBM3"), "H100-SXM-80GB");
        assert_eq!(canonical_model("NVIDIA GeForce RTX 4090"), "RTX-4090");
        assert_eq!(canonical_model("NVIDIA GeForce GTX 1080 Ti"), "GeForce GTX 1080 Ti");
        assert_eq!(canonical_model("  Some Card  "), "Some Card");
    }

    #[test]
    fn clean_driver_name_strips_only_a_leading_nvidia() {
        assert_eq!(clean_driver_name("NVIDIA H100 80GB HBM3"), "H100 80GB HBM3");
        assert_eq!(clean_driver_name("nvidia L4"), "L4");
        assert_eq!(clean_driver_name("NVIDIA"), "NVIDIA");
        assert_eq!(clean_driver_name("NVIDIA   "), "NVIDIA");
        assert_eq!(clean_driver_name("Tesla T4"), "Tesla T4");
        assert_eq!(clean_driver_name("GeForce RTX 4090 NVIDIA"), "GeForce RTX 4090 NVIDIA");
        // Multi-byte text must not panic at the 7-byte cut.
        assert_eq!(clean_driver_name("NVIDIÄ X"), "NVIDIÄ X");
    }

    #[test]
    fn known_models_lists_every_entry() {
        let list = known_models();
        for e in CATALOGUE {
            assert!(list.contains(e.model));
        }
    }
}
