//! Tests of the simulation spec syntax, its errors and the stable UUIDs.

use super::*;
use gpumesh_protocol::{ComputeCapability, Interconnect};

const SEED: &[u8] = &[7u8; 32];

#[test]
fn catalogue_models_take_catalogue_facts() {
    let gpus = simulate("H100-SXM-80GB:2,RTX-4090:1", SEED).unwrap();
    assert_eq!(gpus.len(), 3);
    assert_eq!(gpus.iter().map(|g| g.index).collect::<Vec<_>>(), vec![0, 1, 2]);
    for g in &gpus[..2] {
        assert_eq!(g.model, "H100-SXM-80GB");
        assert_eq!(g.vram_mib, 81559);
        assert_eq!(g.compute_capability, Some(ComputeCapability(9, 0)));
        assert_eq!(g.interconnect, Interconnect::Sxm);
    }
    let g = &gpus[2];
    assert_eq!((g.model.as_str(), g.vram_mib), ("RTX-4090", 24564));
    assert_eq!(g.interconnect, Interconnect::Pcie);
    assert!(gpus.iter().all(|g| g.source == GpuSource::Simulated && !g.mig && g.vendor == "nvidia"));
}

#[test]
fn count_defaults_to_one_and_spelling_is_forgiven() {
    let gpus = simulate(" h100 sxm 80gb , l40s:3 ", SEED).unwrap();
    assert_eq!(gpus.len(), 4);
    assert_eq!(gpus[0].model, "H100-SXM-80GB");
    assert!(gpus[1..].iter().all(|g| g.model == "L40S"));
}

#[test]
fn custom_models_need_and_use_vram() {
    let gpus = simulate("MyCard:2:48", SEED).unwrap();
    assert_eq!(gpus.len(), 2);
    assert_eq!(gpus[0].model, "MyCard");
    assert_eq!(gpus[0].vram_mib, 48 * 1024);
    assert_eq!(gpus[0].compute_capability, None);
    assert_eq!(gpus[0].interconnect, Interconnect::Pcie);
    assert_eq!(simulate("MySXM-Card:1:96", SEED).unwrap()[0].interconnect, Interconnect::Sxm);
}

#[test]
fn vram_overrides_a_catalogue_model() {
    let gpus = simulate("A100-SXM-80GB:1:40", SEED).unwrap();
    assert_eq!(gpus[0].vram_mib, 40 * 1024);
    assert_eq!(gpus[0].compute_capability, Some(ComputeCapability(8, 0)));
}

#[test]
fn amd_models_simulate_without_a_compute_capability() {
    let g = &simulate("MI300X:1", SEED).unwrap()[0];
    assert_eq!((g.vendor.as_str(), g.compute_capability), ("amd", None));
}

#[test]
fn uuids_are_stable_per_seed_and_distinct() {
    let spec = "H100-SXM-80GB:8,RTX-4090:4";
    let a = simulate(spec, SEED).unwrap();
    let b = simulate(spec, SEED).unwrap();
    let c = simulate(spec, &[8u8; 32]).unwrap();
    assert_eq!(a, b);
    let uuids: std::collections::HashSet<_> = a.iter().chain(&c).map(|g| g.uuid.clone()).collect();
    assert_eq!(uuids.len(), 24, "no UUID repeats within or across seeds");
    // The canonical model is hashed, so any spelling of a model gives the same UUIDs.
    assert_eq!(simulate("h100sxm80gb:8,rtx 4090:4", SEED).unwrap(), a);
}

#[test]
fn uuid_format_and_known_vector() {
    let uuid = simulated_uuid(b"seed", "H100-SXM-80GB", 0);
    assert_eq!(uuid.len(), 4 + 36);
    let groups: Vec<usize> = uuid["GPU-".len()..].split('-').map(str::len).collect();
    assert_eq!(groups, vec![8, 4, 4, 4, 12]);
    assert!(
        uuid["GPU-".len()..].chars().all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    // sha256("gpumesh-sim" "seed" "H100-SXM-80GB" 00 00 00 00), first 16 bytes; computed
    // independently with Python's hashlib.
    assert_eq!(uuid, KNOWN_UUID);
    assert_ne!(simulated_uuid(b"seed", "H100-SXM-80GB", 1), uuid);
}

const KNOWN_UUID: &str = "GPU-1e95b3da-f938-23c9-5fc5-20f28044b0e9";

fn err(spec: &str) -> SimulateError {
    match simulate(spec, SEED) {
        Ok(gpus) => panic!("`{spec}` should fail but gave {} GPUs", gpus.len()),
        Err(e) => e,
    }
}

#[test]
fn each_mistake_has_its_own_error() {
    assert_eq!(err(""), SimulateError::Empty);
    assert_eq!(err("  "), SimulateError::Empty);
    assert_eq!(err("H100,,L4"), SimulateError::EmptyEntry { spec: "H100,,L4".into(), position: 2 });
    assert_eq!(err("H100,"), SimulateError::EmptyEntry { spec: "H100,".into(), position: 2 });
    assert_eq!(err("H100:1:80:x"), SimulateError::TooManyParts { entry: "H100:1:80:x".into(), parts: 4 });
    assert_eq!(err(":2"), SimulateError::EmptyModel { entry: ":2".into() });
    assert_eq!(err("H100:two"), SimulateError::BadCount { entry: "H100:two".into(), count: "two".into() });
    assert_eq!(err("H100:"), SimulateError::BadCount { entry: "H100:".into(), count: "".into() });
    assert_eq!(err("H100:-1"), SimulateError::BadCount { entry: "H100:-1".into(), count: "-1".into() });
    assert_eq!(err("H100:0"), SimulateError::CountOutOfRange { entry: "H100:0".into(), count: 0 });
    assert_eq!(err("H100:65"), SimulateError::CountOutOfRange { entry: "H100:65".into(), count: 65 });
    assert_eq!(
        err("H100:99999999999"),
        SimulateError::CountOutOfRange { entry: "H100:99999999999".into(), count: 99_999_999_999 }
    );
    for vram in ["0", "48.5", "-4", "lots", "", "4097"] {
        let spec = format!("MyCard:1:{vram}");
        assert_eq!(err(&spec), SimulateError::BadVram { entry: spec.clone(), vram: vram.into() });
    }
    assert!(matches!(err("MyCard:2"), SimulateError::UnknownModel { model, .. } if model == "MyCard"));
    let long = "X".repeat(65);
    assert!(matches!(err(&format!("{long}:1:8")), SimulateError::ModelTooLong { len: 65, .. }));
    let many = vec!["H100:64"; 17].join(",");
    assert_eq!(err(&many), SimulateError::TooManyGpus { total: 17 * 64 });
    assert_eq!(simulate(&vec!["H100:64"; 16].join(","), SEED).unwrap().len(), 1024);
}

#[test]
fn messages_say_what_is_wrong_and_how_to_fix_it() {
    assert_eq!(
        err("H100:0").to_string(),
        "`H100:0` has a count of 0; COUNT must be 1..=64 (syntax MODEL[:COUNT[:VRAM_GIB]], e.g. H100-SXM-80GB:2)"
    );
    let unknown = err("MyCard").to_string();
    assert!(unknown.contains("`MyCard` is not in the catalogue"), "{unknown}");
    assert!(unknown.contains("MyCard:COUNT:VRAM_GIB"), "{unknown}");
    assert!(unknown.contains("H100-SXM-80GB") && unknown.contains("RTX-4090"), "{unknown}");
    let vram = err("MyCard:1:0").to_string();
    assert!(vram.contains("VRAM_GIB must be a whole number of GiB from 1 to 4096"), "{vram}");
    assert!(err("").to_string().contains("MODEL[:COUNT[:VRAM_GIB]]"));
}

proptest::proptest! {
    #[test]
    fn simulate_never_panics(spec in "\\PC{0,80}", seed in proptest::collection::vec(0u8.., 0..40)) {
        let _ = simulate(&spec, &seed);
    }

    #[test]
    fn valid_specs_give_count_gpus_with_unique_uuids(
        counts in proptest::collection::vec(1u32..=64, 1..6),
        seed in proptest::collection::vec(0u8.., 0..40),
    ) {
        let models = ["H100-SXM-80GB", "RTX-4090", "MyCard:{}:24", "L4", "T4"];
        let spec = counts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let m = models[i % models.len()];
                if m.contains("{}") { m.replace("{}", &c.to_string()) } else { format!("{m}:{c}") }
            })
            .collect::<Vec<_>>()
            .join(",");
        let gpus = simulate(&spec, &seed).unwrap();
        let total: u32 = counts.iter().sum();
        proptest::prop_assert_eq!(gpus.len(), total as usize);
        let uuids: std::collections::HashSet<_> = gpus.iter().map(|g| &g.uuid).collect();
        proptest::prop_assert_eq!(uuids.len(), gpus.len());
        for (i, g) in gpus.iter().enumerate() {
            proptest::prop_assert_eq!(g.index as usize, i);
        }
    }
}
