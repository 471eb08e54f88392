//! Tests of detection, grouping, the source names and the shared field rules.

use super::*;

const SEED: &[u8] = b"node-seed";

fn gpu(index: u32, uuid: &str, model: &str, vram_mib: u32) -> DetectedGpu {
    DetectedGpu {
        index,
        uuid: uuid.to_string(),
        vendor: "NVIDIA".to_string(),
        model: model.to_string(),
        vram_mib,
        compute_capability: Some(ComputeCapability(8, 9)),
        driver_version: Some("550.54.15".to_string()),
        cuda_version: Some("12.4".to_string()),
        interconnect: Interconnect::Pcie,
        source: GpuSource::NvidiaSmi,
        mig: false,
    }
}

#[test]
fn detect_without_gpus_explains_itself() {
    let inv = detect();
    if inv.gpus.is_empty() {
        // A machine without GPUs (CI): nothing found, and the notes say what was tried.
        assert_eq!(inv.source, None);
        assert!(!inv.notes.is_empty());
        assert!(inv.notes.iter().any(|n| n.contains("NVML")), "{:?}", inv.notes);
        assert!(inv.notes.iter().any(|n| n.contains("nvidia-smi")), "{:?}", inv.notes);
    } else {
        // A GPU machine: everything found must be consistent.
        let source = inv.source.expect("GPUs come with a source");
        assert_ne!(source, GpuSource::Simulated);
        let mut uuids = HashSet::new();
        for g in &inv.gpus {
            assert_eq!(g.source, source);
            assert!(uuids.insert(g.uuid.clone()), "duplicate {}", g.uuid);
            assert!(g.vram_mib > 0 && !g.model.is_empty() && g.vendor == "nvidia");
        }
    }
}

#[test]
fn source_names_in_json_and_display() {
    for (source, name) in
        [(GpuSource::Nvml, "nvml"), (GpuSource::NvidiaSmi, "nvidia-smi"), (GpuSource::Simulated, "simulated")]
    {
        assert_eq!(source.to_string(), name);
        assert_eq!(serde_json::to_string(&source).unwrap(), format!("\"{name}\""));
        assert_eq!(serde_json::from_str::<GpuSource>(&format!("\"{name}\"")).unwrap(), source);
    }
}

#[test]
fn detected_gpu_json_carries_the_essentials() {
    let g = &simulate("H100-SXM-80GB:1", SEED).unwrap()[0];
    let json = serde_json::to_value(g).unwrap();
    assert_eq!(json["uuid"], g.uuid.as_str());
    assert_eq!(json["model"], "H100-SXM-80GB");
    assert_eq!(json["vram_mib"], 81559);
    assert_eq!(json["source"], "simulated");
    assert_eq!(json["interconnect"], "sxm");
    assert_eq!(json["compute_capability"], serde_json::json!([9, 0]));
    let inv = Inventory::simulated(vec![g.clone()]);
    let back: Inventory = serde_json::from_str(&serde_json::to_string(&inv).unwrap()).unwrap();
    assert_eq!(back, inv);
}

#[test]
fn unknown_fields() {
    for f in ["", "  ", "N/A", "n/a", "[N/A]", "[Not Supported]", "Not Supported", "[Unknown Error]"] {
        assert!(is_unknown(f), "{f:?}");
    }
    for f in ["0", "GPU-x", "8.9", "NVIDIA L4"] {
        assert!(!is_unknown(f), "{f:?}");
    }
}

#[test]
fn interconnect_heuristic() {
    assert_eq!(interconnect_for("A100-SXM4-80GB", false), Interconnect::Sxm);
    assert_eq!(interconnect_for("Tesla V100-SXM2-32GB", false), Interconnect::Sxm);
    assert_eq!(interconnect_for("H100 80GB HBM3", false), Interconnect::Sxm, "catalogue");
    assert_eq!(interconnect_for("H200", false), Interconnect::Sxm, "catalogue");
    assert_eq!(interconnect_for("GeForce RTX 4090", false), Interconnect::Pcie);
    assert_eq!(interconnect_for("Unknown Card", false), Interconnect::Pcie);
    // Bridged PCIe cards become NVLink; SXM stays SXM.
    assert_eq!(interconnect_for("H100 NVL", true), Interconnect::Nvlink);
    assert_eq!(interconnect_for("GeForce RTX 3090", true), Interconnect::Nvlink);
    assert_eq!(interconnect_for("H100 80GB HBM3", true), Interconnect::Sxm);
}

#[test]
fn finish_applies_the_nvlink_flag_and_keeps_the_cuda_version() {
    let raw = RawGpu {
        index: 0,
        uuid: Some("GPU-a".into()),
        name: Some("NVIDIA H100 NVL".into()),
        vram_mib: Some(95830),
        cuda_version: Some("12.4".into()),
        nvlink_active: true,
        ..RawGpu::default()
    };
    let mut notes = Vec::new();
    let gpus = finish(vec![("NVML device 0".into(), raw)], GpuSource::Nvml, &mut notes);
    assert_eq!(gpus[0].interconnect, Interconnect::Nvlink);
    assert_eq!(gpus[0].model, "H100 NVL");
    assert_eq!(gpus[0].cuda_version.as_deref(), Some("12.4"));
    assert_eq!(gpus[0].compute_capability, Some(ComputeCapability(9, 0)));
    assert!(notes[0].starts_with("NVML device 0: GPU 0 (GPU-a) did not report its compute capability"));
}

#[test]
fn group_merges_identical_gpus_and_orders_by_index() {
    let gpus = vec![
        gpu(3, "GPU-d", "GeForce RTX 4090", 24564),
        gpu(1, "GPU-b", "GeForce RTX 3090", 24576),
        gpu(0, "GPU-a", "GeForce RTX 4090", 24564),
        gpu(2, "GPU-c", "RTX-4090", 24564),
    ];
    let groups = group(&gpus);
    assert_eq!(groups.len(), 2);
    let (spec, units) = &groups[0];
    assert_eq!(spec.model, "RTX-4090");
    assert_eq!(spec.vendor, "nvidia");
    assert_eq!(spec.vram_mib, 24564);
    assert_eq!(spec.driver_version.as_deref(), Some("550.54.15"));
    assert_eq!(spec.cuda_version.as_deref(), Some("12.4"));
    let indices: Vec<u32> = units.iter().map(|u| u.index).collect();
    assert_eq!(indices, vec![0, 2, 3]);
    assert_eq!(units[0], GpuUnit { uuid: "GPU-a".into(), index: 0 });
    assert_eq!(groups[1].0.model, "RTX-3090");
    assert_eq!(groups[1].1, vec![GpuUnit { uuid: "GPU-b".into(), index: 1 }]);

    // Input order does not matter.
    let mut reversed = gpus.clone();
    reversed.reverse();
    assert_eq!(group(&reversed), groups);
}

#[test]
fn group_splits_on_vram_interconnect_and_compute_capability() {
    let mut a = gpu(0, "GPU-a", "Card", 1000);
    let b = gpu(1, "GPU-b", "Card", 2000);
    let mut c = gpu(2, "GPU-c", "Card", 1000);
    c.interconnect = Interconnect::Nvlink;
    let mut d = gpu(3, "GPU-d", "card", 1000);
    d.compute_capability = None;
    a.vendor = "nvidia".into();
    let e = gpu(4, "GPU-e", "CARD", 1000);
    let groups = group(&[a, b, c, d, e]);
    let sizes: Vec<usize> = groups.iter().map(|(_, u)| u.len()).collect();
    assert_eq!(sizes, vec![2, 1, 1, 1], "a and e share a group: model case and vendor case ignored");
    assert_eq!(groups[0].0.model, "Card", "the lowest index names the group");
}

#[test]
fn group_leaves_out_mig_gpus_and_duplicate_uuids() {
    let mut mig = gpu(0, "GPU-mig", "A100-SXM4-80GB", 81920);
    mig.mig = true;
    let whole = gpu(1, "GPU-whole", "A100-SXM4-80GB", 81920);
    let dup = gpu(2, "GPU-whole", "A100-SXM4-80GB", 81920);
    let groups = group(&[mig, whole, dup]);
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].0.model, "A100-SXM-80GB");
    assert_eq!(groups[0].1, vec![GpuUnit { uuid: "GPU-whole".into(), index: 1 }]);
    assert!(group(&[]).is_empty());
}

#[test]
fn group_of_parsed_mig_fixture_has_only_whole_gpus() {
    let (gpus, _) = parse_nvidia_smi_csv(include_str!("fixtures/a100_mig.csv"));
    let groups = group(&gpus);
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].1.iter().map(|u| u.index).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(groups[0].0.group_key(), "a100-sxm-80gb|81920|sxm");
}

#[test]
fn group_of_simulated_spec() {
    let gpus = simulate("H100-SXM-80GB:2,RTX-4090:1,H100-SXM-80GB:1", SEED).unwrap();
    let groups = group(&gpus);
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0].0.model, "H100-SXM-80GB");
    assert_eq!(groups[0].1.iter().map(|u| u.index).collect::<Vec<_>>(), vec![0, 1, 3]);
    assert_eq!(groups[0].0.interconnect, Interconnect::Sxm);
    assert_eq!(groups[1].0.model, "RTX-4090");
    assert_eq!(groups[1].0.vram_gib_rounded(), 24);
}
