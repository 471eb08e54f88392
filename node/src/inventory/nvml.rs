//! Reading GPUs through NVML. `nvml-wrapper` loads `libnvidia-ml.so.1` at run time, so a
//! machine without the NVIDIA driver builds and runs fine: [`detect`] then returns `Err` with
//! the reason, which means "no NVIDIA GPUs via NVML", not a failure.

use super::{DetectedGpu, GpuSource, RawGpu, finish, known};
use gpumesh_protocol::ComputeCapability;
use nvml_wrapper::Nvml;

/// `NVML_DEVICE_MIG_ENABLE` in `nvml.h`: the value of `MigMode::current` when MIG is on.
const MIG_ENABLED: u32 = 1;
/// `NVML_NVLINK_MAX_LINKS` in `nvml.h` (18 since Hopper). Asking about a link a GPU does not
/// have returns an error, which counts as "not active".
const NVLINK_MAX_LINKS: u32 = 18;

/// Reads every GPU NVML can see. `Err` (with NVML's reason) when NVML cannot be loaded or
/// initialised, or cannot count GPUs; per-GPU problems become notes and the GPU is skipped.
pub fn detect() -> Result<(Vec<DetectedGpu>, Vec<String>), String> {
    let nvml = Nvml::init().map_err(|e| e.to_string())?;
    let mut notes = Vec::new();
    let driver_version = nvml.sys_driver_version().ok().filter(|v| known(v).is_some());
    let cuda_version = nvml.sys_cuda_driver_version().ok().and_then(cuda_version_string);
    let count = nvml.device_count().map_err(|e| format!("NVML loaded but could not count GPUs: {e}"))?;
    notes.push(format!(
        "NVML: {count} GPU(s), driver {}, CUDA {}",
        driver_version.as_deref().unwrap_or("unknown"),
        cuda_version.as_deref().unwrap_or("unknown"),
    ));
    tracing::debug!(count, driver = ?driver_version, cuda = ?cuda_version, "NVML initialised");

    let mut rows = Vec::new();
    for i in 0..count {
        let origin = format!("NVML device {i}");
        let device = match nvml.device_by_index(i) {
            Ok(device) => device,
            Err(e) => {
                notes.push(format!("{origin}: skipped: NVML could not open it: {e}"));
                tracing::warn!(index = i, error = %e, "NVML could not open GPU");
                continue;
            }
        };
        let mut read = |what: &str, e: nvml_wrapper::error::NvmlError| {
            notes.push(format!("{origin}: could not read its {what}: {e}"));
            tracing::debug!(index = i, what, error = %e, "NVML read failed");
        };
        let uuid = device.uuid().map_err(|e| read("UUID", e)).ok();
        let name = device.name().map_err(|e| read("name", e)).ok();
        let vram_mib = device.memory_info().map_err(|e| read("memory size", e)).ok();
        let raw = RawGpu {
            index: device.index().unwrap_or(i),
            uuid: uuid.filter(|u| known(u).is_some()),
            name: name.filter(|n| known(n).is_some()),
            vram_mib: vram_mib.map(|m| bytes_to_mib(m.total)),
            compute_capability: device
                .cuda_compute_capability()
                .ok()
                .and_then(|c| compute_capability(c.major, c.minor)),
            driver_version: driver_version.clone(),
            cuda_version: cuda_version.clone(),
            // `NotSupported` on GPUs without MIG: those are whole GPUs.
            mig: device.mig_mode().is_ok_and(|m| m.current == MIG_ENABLED),
            nvlink_active: (0..NVLINK_MAX_LINKS)
                .any(|link| device.link_wrapper_for(link).is_active().unwrap_or(false)),
        };
        rows.push((origin, raw));
    }
    Ok((finish(rows, GpuSource::Nvml, &mut notes), notes))
}

/// NVML's CUDA driver version (`12040`) as `major.minor` (`12.4`); `None` when not positive.
pub(crate) fn cuda_version_string(version: i32) -> Option<String> {
    (version > 0).then(|| {
        format!(
            "{}.{}",
            nvml_wrapper::cuda_driver_version_major(version),
            nvml_wrapper::cuda_driver_version_minor(version)
        )
    })
}

/// Bytes to whole MiB, rounded down, saturating at `u32::MAX`.
pub(crate) fn bytes_to_mib(bytes: u64) -> u32 {
    u32::try_from(bytes / (1024 * 1024)).unwrap_or(u32::MAX)
}

/// NVML's `(major, minor)` as a [`ComputeCapability`]; `None` when out of range.
pub(crate) fn compute_capability(major: i32, minor: i32) -> Option<ComputeCapability> {
    Some(ComputeCapability(u8::try_from(major).ok()?, u8::try_from(minor).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_versions_print_as_major_minor() {
        assert_eq!(cuda_version_string(12040).as_deref(), Some("12.4"));
        assert_eq!(cuda_version_string(12080).as_deref(), Some("12.8"));
        assert_eq!(cuda_version_string(13000).as_deref(), Some("13.0"));
        assert_eq!(cuda_version_string(11020).as_deref(), Some("11.2"));
        assert_eq!(cuda_version_string(0), None);
        assert_eq!(cuda_version_string(-1), None);
    }

    #[test]
    fn memory_converts_to_mib() {
        // An H100 SXM reports 85_520_809_984 bytes = 81559 MiB.
        assert_eq!(bytes_to_mib(85_520_809_984), 81_559);
        assert_eq!(bytes_to_mib(24_564 * 1024 * 1024 + 1023), 24_564);
        assert_eq!(bytes_to_mib(0), 0);
        assert_eq!(bytes_to_mib(u64::MAX), u32::MAX);
    }

    #[test]
    fn compute_capability_rejects_out_of_range() {
        assert_eq!(compute_capability(9, 0), Some(ComputeCapability(9, 0)));
        assert_eq!(compute_capability(-1, 0), None);
        assert_eq!(compute_capability(9, 300), None);
    }

    /// On a machine without the NVIDIA driver NVML must say why, not panic; on one with it,
    /// every GPU must be consistent.
    #[test]
    fn detect_never_panics() {
        match detect() {
            Err(reason) => assert!(!reason.is_empty()),
            Ok((gpus, notes)) => {
                assert!(!notes.is_empty());
                for g in gpus {
                    assert_eq!(g.source, GpuSource::Nvml);
                    assert!(!g.uuid.is_empty() && g.vram_mib > 0);
                }
            }
        }
    }
}
