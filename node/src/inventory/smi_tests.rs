//! Tests of the `nvidia-smi` parser on recorded outputs, and of the runner against fake
//! `nvidia-smi` scripts.

use super::*;
use gpumesh_protocol::Interconnect;

const RTX4090: &str = include_str!("fixtures/rtx4090.csv");
const H100_SXM_X8: &str = include_str!("fixtures/h100_sxm_x8.csv");
const A100_MIG: &str = include_str!("fixtures/a100_mig.csv");
const MIXED: &str = include_str!("fixtures/mixed.csv");
const GARBAGE: &str = include_str!("fixtures/garbage.txt");
const TABLE: &str = include_str!("fixtures/nvidia_smi_table.txt");
const VERSION: &str = include_str!("fixtures/nvidia_smi_version.txt");
// Recorded on a machine with one real H200 (driver 580.159.04), 2026-11-27: the query's output,
// `nvidia-smi --version`, and what `gpumesh gpus --json` reported through NVML on that machine.
const H200_CSV: &str = include_str!("fixtures/h200_recorded.csv");
const H200_VERSION: &str = include_str!("fixtures/h200_recorded_version.txt");
const H200_NVML: &str = include_str!("fixtures/h200_recorded_nvml.json");

fn notes_mention(notes: &[String], needle: &str) -> bool {
    notes.iter().any(|n| n.contains(needle))
}

#[test]
fn single_rtx_4090() {
    let (gpus, notes) = parse_nvidia_smi_csv(RTX4090);
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(gpus.len(), 1);
    let g = &gpus[0];
    assert_eq!(g.index, 0);
    assert_eq!(g.uuid, "GPU-8f6b3c2d-51a4-4e9e-9c1f-2b7d0e4a6c13");
    assert_eq!(g.vendor, "nvidia");
    assert_eq!(g.model, "GeForce RTX 4090");
    assert_eq!(g.vram_mib, 24564);
    assert_eq!(g.compute_capability, Some(ComputeCapability(8, 9)));
    assert_eq!(g.driver_version.as_deref(), Some("550.54.14"));
    assert_eq!(g.cuda_version, None);
    assert_eq!(g.interconnect, Interconnect::Pcie);
    assert_eq!(g.source, GpuSource::NvidiaSmi);
    assert!(!g.mig);
}

#[test]
fn recorded_h200_output_parses_to_what_nvml_reported_on_the_same_card() {
    let (mut gpus, notes) = parse_nvidia_smi_csv(H200_CSV);
    assert!(notes.is_empty(), "{notes:?}");
    let cuda = parse_cuda_version(H200_VERSION).expect("the recorded --version shows CUDA");
    assert_eq!(cuda, "13.0");
    gpus.iter_mut().for_each(|g| g.cuda_version = Some(cuda.clone()));

    let mut nvml: Vec<DetectedGpu> = serde_json::from_str(H200_NVML).expect("recorded NVML JSON");
    assert!(nvml.iter().all(|g| g.source == GpuSource::Nvml));
    nvml.iter_mut().for_each(|g| g.source = GpuSource::NvidiaSmi);
    // Every field but the source agrees: the fallback offers the same GPU NVML would.
    assert_eq!(gpus, nvml);

    let groups = super::super::group(&gpus);
    assert_eq!(groups.len(), 1);
    let (spec, units) = &groups[0];
    assert_eq!(spec.model, "H200-SXM-141GB");
    assert_eq!(spec.vram_mib, 143771);
    assert_eq!(spec.interconnect, Interconnect::Sxm);
    assert_eq!(units.len(), 1);
    assert_eq!(units[0].uuid, "GPU-967a0ca0-c7c1-c29d-0061-9eaa24b14f9f");
}

#[test]
fn eight_h100_sxm() {
    let (gpus, notes) = parse_nvidia_smi_csv(H100_SXM_X8);
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(gpus.len(), 8);
    assert_eq!(gpus.iter().map(|g| g.index).collect::<Vec<_>>(), (0..8).collect::<Vec<_>>());
    assert_eq!(gpus[0].uuid, "GPU-5b3c1a2e-7d4f-4c1b-9e8a-0f2d6c3b1a9e");
    for g in &gpus {
        assert_eq!(g.model, "H100 80GB HBM3");
        assert_eq!(g.vram_mib, 81559);
        assert_eq!(g.compute_capability, Some(ComputeCapability(9, 0)));
        assert_eq!(g.driver_version.as_deref(), Some("550.54.15"));
        // The name does not say SXM; the catalogue knows this part is one.
        assert_eq!(g.interconnect, Interconnect::Sxm);
        assert!(!g.mig);
    }
    let uuids: std::collections::HashSet<_> = gpus.iter().map(|g| &g.uuid).collect();
    assert_eq!(uuids.len(), 8);
}

#[test]
fn mig_machine_marks_mig_fills_from_catalogue_and_skips_the_rest() {
    let (gpus, notes) = parse_nvidia_smi_csv(A100_MIG);
    let by_index = |i: u32| gpus.iter().find(|g| g.index == i);
    assert_eq!(gpus.iter().map(|g| g.index).collect::<Vec<_>>(), vec![0, 1, 2, 3]);

    let g0 = by_index(0).unwrap();
    assert!(g0.mig);
    assert_eq!((g0.vram_mib, g0.interconnect), (81920, Interconnect::Sxm));
    assert_eq!(g0.model, "A100-SXM4-80GB");

    // `[N/A]` VRAM and `[Not Supported]` compute capability come from the catalogue.
    let g1 = by_index(1).unwrap();
    assert!(g1.mig);
    assert_eq!(g1.vram_mib, 81920);
    assert_eq!(g1.compute_capability, Some(ComputeCapability(8, 0)));
    assert!(notes_mention(&notes, "nvidia-smi line 2: GPU 1"), "{notes:?}");
    assert!(notes_mention(&notes, "81920 MiB and 8.0 for A100-SXM-80GB"), "{notes:?}");

    assert!(!by_index(2).unwrap().mig && !by_index(3).unwrap().mig);

    // No UUID: skipped, never a panic.
    assert!(notes_mention(&notes, "line 5: skipped GPU 4: the driver reported no UUID"), "{notes:?}");
    // Unknown model with unknown VRAM: skipped with the reason.
    assert!(notes_mention(&notes, "line 6: skipped GPU 5"), "{notes:?}");
    assert!(notes_mention(&notes, "`A800-SXM4-80GB` is not in the catalogue"), "{notes:?}");
    assert_eq!(notes.len(), 3, "{notes:?}");
}

#[test]
fn mixed_machine_keeps_each_card_as_printed() {
    let (gpus, notes) = parse_nvidia_smi_csv(MIXED);
    assert!(notes.is_empty(), "{notes:?}");
    let models: Vec<_> = gpus.iter().map(|g| g.model.as_str()).collect();
    assert_eq!(
        models,
        ["GeForce RTX 4090", "GeForce RTX 3090", "GeForce RTX 4090", "GeForce GTX 1080 Ti", "Tesla T4"]
    );
    assert_eq!(gpus[3].vram_mib, 11264);
    assert_eq!(gpus[3].compute_capability, Some(ComputeCapability(6, 1)));
    assert!(gpus.iter().all(|g| g.interconnect == Interconnect::Pcie));
    assert!(gpus.iter().all(|g| g.driver_version.as_deref() == Some("550.127.05")));
}

#[test]
fn garbage_lines_become_notes() {
    let (gpus, notes) = parse_nvidia_smi_csv(GARBAGE);
    // Line 6: `lots` MiB → catalogue; line 7: `nine` → catalogue. Everything else is skipped.
    assert_eq!(gpus.iter().map(|g| g.index).collect::<Vec<_>>(), vec![1, 2]);
    assert!(gpus.iter().all(|g| g.model == "L4" && g.vram_mib == 23034));
    assert!(gpus.iter().all(|g| g.compute_capability == Some(ComputeCapability(8, 9))));
    for needle in [
        "line 1: nvidia-smi said: No devices were found",
        "line 3: nvidia-smi said: NVIDIA-SMI has failed",
        "line 4: not a GPU row (expected 6 or 7 comma-separated fields, found 2)",
        "line 5: skipped: GPU index `x` is not a number",
        "line 6: memory.total `lots` is not a number of MiB",
        "line 7: compute_cap `nine` is not MAJOR.MINOR",
        "line 8: not a GPU row (expected 6 or 7 comma-separated fields, found 8)",
        "line 9: skipped GPU 4: UUID GPU-7f150524-34b9-45df-9e77-69b10f4205b4 was already listed as GPU 1",
        "line 10: nvidia-smi said: Unable to determine the device handle",
        "line 11: skipped GPU 5 (GPU-4cdd2055-930d-4eaf-94f4-733f3e7d1bfb): the driver reported no name",
    ] {
        assert!(notes_mention(&notes, needle), "missing `{needle}` in {notes:#?}");
    }
    // The long driver message is quoted shortened.
    assert!(notes.iter().all(|n| n.chars().count() < 250), "{notes:#?}");
}

#[test]
fn extra_whitespace_tabs_and_bom_are_fine() {
    let text = "\u{feff}  0 ,\tGPU-aaaaaaaa-0000-4000-8000-000000000000 ,  NVIDIA L40S\t, 46068 MiB ,8.9,  550.54.15 \n\n\t\n  1,GPU-bbbbbbbb-0000-4000-8000-000000000000,NVIDIA L40S,46068,8.9,550.54.15,  Disabled  ";
    let (gpus, notes) = parse_nvidia_smi_csv(text);
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(gpus.len(), 2);
    assert_eq!(gpus[0].uuid, "GPU-aaaaaaaa-0000-4000-8000-000000000000");
    assert_eq!(gpus[0].model, "L40S");
    assert_eq!(gpus[0].vram_mib, 46068);
    assert_eq!(gpus[1].driver_version.as_deref(), Some("550.54.15"));
}

#[test]
fn windows_line_endings_parse_the_same() {
    for text in [H100_SXM_X8, A100_MIG, MIXED, GARBAGE] {
        let crlf = text.replace('\n', "\r\n");
        assert_eq!(parse_nvidia_smi_csv(&crlf), parse_nvidia_smi_csv(text));
    }
    let (gpus, _) = parse_nvidia_smi_csv("0, GPU-x, NVIDIA T4, 15360, 7.5, 535.1\r\n");
    assert_eq!(gpus[0].driver_version.as_deref(), Some("535.1"));
}

#[test]
fn empty_output_gives_nothing() {
    assert_eq!(parse_nvidia_smi_csv(""), (vec![], vec![]));
    assert_eq!(parse_nvidia_smi_csv("\n\r\n  \n"), (vec![], vec![]));
}

#[test]
fn mig_column_values() {
    let row = |mig: &str| format!("0, GPU-x, NVIDIA A100-SXM4-80GB, 81920, 8.0, 550.54.15, {mig}");
    assert!(parse_nvidia_smi_csv(&row("Enabled")).0[0].mig);
    assert!(parse_nvidia_smi_csv(&row("enabled")).0[0].mig);
    assert!(!parse_nvidia_smi_csv(&row("Disabled")).0[0].mig);
    assert!(!parse_nvidia_smi_csv(&row("[N/A]")).0[0].mig);
}

#[test]
fn cuda_version_from_table_and_version_outputs() {
    assert_eq!(parse_cuda_version(TABLE).as_deref(), Some("12.4"));
    assert_eq!(parse_cuda_version(VERSION).as_deref(), Some("12.8"));
    assert_eq!(parse_cuda_version("| CUDA Version: 13.0 |").as_deref(), Some("13.0"));
    assert_eq!(parse_cuda_version("CUDA Version: N/A"), None);
    assert_eq!(parse_cuda_version("CUDA Version: 12"), None);
    assert_eq!(parse_cuda_version("no version here"), None);
    assert_eq!(parse_cuda_version(""), None);
}

proptest::proptest! {
    #[test]
    fn parser_never_panics(text in "\\PC{0,300}") {
        let _ = parse_nvidia_smi_csv(&text);
        let _ = parse_cuda_version(&text);
    }

    #[test]
    fn parser_never_panics_on_row_like_text(
        fields in proptest::collection::vec("[ \\[\\]A-Za-z0-9./\\-\u{e4}]{0,12}", 0..9),
    ) {
        let line = fields.join(",");
        let (gpus, _) = parse_nvidia_smi_csv(&line);
        for g in gpus {
            proptest::prop_assert!(g.vram_mib > 0 && !g.uuid.is_empty() && !g.model.is_empty());
        }
    }
}

/// Runs fake `nvidia-smi` scripts through `sh`, so the runner's spawning, timeouts, retries
/// and CUDA lookup are tested without a GPU.
#[cfg(unix)]
mod runner {
    use super::*;
    use std::path::PathBuf;

    struct FakeSmi(PathBuf);

    impl FakeSmi {
        fn new(name: &str, script: &str) -> FakeSmi {
            let path =
                std::env::temp_dir().join(format!("gpumesh-fake-smi-{}-{name}.sh", std::process::id()));
            std::fs::write(&path, script).expect("write fake nvidia-smi script");
            FakeSmi(path)
        }

        fn command(&self, timeout: Duration) -> SmiCommand {
            SmiCommand {
                program: OsString::from("sh"),
                prefix_args: vec![self.0.clone().into_os_string()],
                timeout,
            }
        }
    }

    impl Drop for FakeSmi {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn script(query_output: &str, query_status: u8) -> String {
        format!(
            "case \"$*\" in\n\
             *--query-gpu=*) cat <<'EOF'\n{query_output}EOF\nexit {query_status};;\n\
             *--version*) printf 'NVIDIA-SMI version  : 550.54.15\\nCUDA Version        : 12.4\\n';;\n\
             esac\n"
        )
    }

    #[test]
    fn detect_reads_gpus_and_the_cuda_version() {
        let fake = FakeSmi::new("h100", &script(H100_SXM_X8, 0));
        let (gpus, notes) = detect_with(&fake.command(Duration::from_secs(10)));
        assert_eq!(gpus.len(), 8, "{notes:?}");
        assert!(gpus.iter().all(|g| g.cuda_version.as_deref() == Some("12.4")));
        assert!(gpus.iter().all(|g| g.source == GpuSource::NvidiaSmi));
    }

    #[test]
    fn old_driver_without_mig_field_is_retried_with_the_base_query() {
        let body = format!(
            "case \"$*\" in\n\
             *mig.mode.current*) echo 'Field \"mig.mode.current\" is not a valid field to query.'; exit 2;;\n\
             *--query-gpu=*) cat <<'EOF'\n{RTX4090}EOF\n;;\n\
             *--version*) exit 1;;\n\
             *) printf '| NVIDIA-SMI 470.0   Driver Version: 470.0   CUDA Version: 11.4 |\\n';;\n\
             esac\n"
        );
        let fake = FakeSmi::new("old", &body);
        let (gpus, notes) = detect_with(&fake.command(Duration::from_secs(10)));
        assert_eq!(gpus.len(), 1, "{notes:?}");
        assert_eq!(gpus[0].cuda_version.as_deref(), Some("11.4"), "from the plain header");
        assert!(notes_mention(&notes, "retrying without mig.mode.current"), "{notes:?}");
        assert!(notes_mention(&notes, "is not a valid field"), "{notes:?}");
    }

    #[test]
    fn partial_output_with_a_failing_exit_status_is_used() {
        let output =
            format!("{}Unable to determine the device handle for GPU0000:41:00.0: Unknown Error\n", RTX4090);
        let fake = FakeSmi::new("partial", &script(&output, 15));
        let (gpus, notes) = detect_with(&fake.command(Duration::from_secs(10)));
        assert_eq!(gpus.len(), 1, "{notes:?}");
        assert!(notes_mention(&notes, "using the 1 GPU(s) it listed"), "{notes:?}");
        assert!(notes_mention(&notes, "Unable to determine the device handle"), "{notes:?}");
    }

    #[test]
    fn failing_nvidia_smi_gives_notes_not_gpus() {
        let fake = FakeSmi::new(
            "nodriver",
            "echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\"; exit 9\n",
        );
        let (gpus, notes) = detect_with(&fake.command(Duration::from_secs(10)));
        assert!(gpus.is_empty());
        assert!(notes_mention(&notes, "couldn't communicate with the NVIDIA driver"), "{notes:?}");
        assert!(notes_mention(&notes, "nvidia-smi listed no GPUs"), "{notes:?}");
        assert!(!notes_mention(&notes, "retrying"), "no retry without a rejected field: {notes:?}");
    }

    #[test]
    fn hung_nvidia_smi_is_killed_after_the_timeout() {
        let fake = FakeSmi::new("hang", "exec sleep 30\n");
        let started = Instant::now();
        let (gpus, notes) = detect_with(&fake.command(Duration::from_millis(300)));
        assert!(gpus.is_empty());
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
        assert!(notes_mention(&notes, "did not finish within"), "{notes:?}");
    }

    #[test]
    fn missing_nvidia_smi_says_not_found() {
        let cmd = SmiCommand {
            program: OsString::from("/nonexistent/gpumesh/nvidia-smi"),
            prefix_args: Vec::new(),
            timeout: Duration::from_secs(1),
        };
        let (gpus, notes) = detect_with(&cmd);
        assert!(gpus.is_empty());
        assert_eq!(notes, vec!["nvidia-smi not found".to_string()]);
    }
}
