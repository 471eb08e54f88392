//! The machine around the GPUs: CPU cores, RAM and free disk. [`detect_host`] never fails; a
//! figure it cannot read is 0 (RAM, disk) or 1 (cores: this code is running on at least one).

use serde::{Deserialize, Serialize};
use std::path::Path;

/// What [`detect_host`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    /// Logical cores this process may use (`std::thread::available_parallelism`, which
    /// honours CPU affinity and cgroup quotas).
    pub cpu_cores: u32,
    /// Total RAM, MiB (`MemTotal` in `/proc/meminfo`); 0 if unreadable.
    pub ram_mib: u64,
    /// Free space for unprivileged users on the file system holding the data directory,
    /// whole GiB rounded down; 0 if unreadable.
    pub disk_gib: u64,
}

/// Reads the host's cores, RAM and the free space under `data_dir`. If `data_dir` does not
/// exist yet, its nearest existing ancestor is measured (it will be created there).
pub fn detect_host(data_dir: &Path) -> HostFacts {
    let cpu_cores = match std::thread::available_parallelism() {
        Ok(n) => u32::try_from(n.get()).unwrap_or(u32::MAX),
        Err(e) => {
            tracing::warn!(error = %e, "could not read the CPU count; assuming 1");
            1
        }
    };
    let ram_mib = match std::fs::read_to_string("/proc/meminfo") {
        Ok(text) => parse_meminfo_total_mib(&text).unwrap_or_else(|| {
            tracing::warn!("no MemTotal in /proc/meminfo; RAM reported as 0");
            0
        }),
        Err(e) => {
            tracing::warn!(error = %e, "could not read /proc/meminfo; RAM reported as 0");
            0
        }
    };
    let disk_gib = match existing_ancestor(data_dir).map(free_bytes) {
        Some(Ok(bytes)) => bytes / (1024 * 1024 * 1024),
        Some(Err(e)) => {
            tracing::warn!(dir = %data_dir.display(), error = %e, "could not read free disk space; reported as 0");
            0
        }
        None => {
            tracing::warn!(dir = %data_dir.display(), "no existing directory to measure; disk reported as 0");
            0
        }
    };
    let facts = HostFacts { cpu_cores, ram_mib, disk_gib };
    tracing::debug!(cpu_cores, ram_mib, disk_gib, dir = %data_dir.display(), "host facts");
    facts
}

/// `MemTotal:  16315972 kB` → MiB.
pub(crate) fn parse_meminfo_total_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let mut words = line.split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    let bytes = match words.next().map(str::to_ascii_lowercase).as_deref() {
        Some("kb") => value.checked_mul(1024)?,
        Some("mb") => value.checked_mul(1024 * 1024)?,
        Some("gb") => value.checked_mul(1024 * 1024 * 1024)?,
        None => value,
        Some(_) => return None,
    };
    Some(bytes / (1024 * 1024))
}

fn existing_ancestor(dir: &Path) -> Option<&Path> {
    dir.ancestors().find(|p| p.is_dir()).or_else(|| dir.is_relative().then_some(Path::new(".")))
}

/// Bytes available to unprivileged users on the file system holding `dir`.
#[cfg(unix)]
#[allow(unsafe_code)]
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `path` is a valid NUL-terminated C string that outlives the call, and `stat`
    // is a plain-old-data struct that `statvfs` fills in; it is only read after `statvfs`
    // returned 0 (success), when every field is initialised.
    let stat = unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut stat) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        stat
    };
    // `fsblkcnt_t` and `f_frsize` are narrower than u64 on some platforms.
    #[allow(clippy::useless_conversion)]
    let (blocks, block_size) = (u64::from(stat.f_bavail), u64::from(stat.f_frsize));
    Ok(blocks.saturating_mul(block_size))
}

#[cfg(not(unix))]
fn free_bytes(_dir: &Path) -> std::io::Result<u64> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "free space is only read on Unix"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_total_parses() {
        let text = "MemTotal:       16315972 kB\nMemFree:         1234567 kB\n";
        assert_eq!(parse_meminfo_total_mib(text), Some(15933));
        assert_eq!(parse_meminfo_total_mib("MemFree: 1 kB\nMemTotal: 2097152 kB"), Some(2048));
        assert_eq!(parse_meminfo_total_mib("MemTotal: lots kB"), None);
        assert_eq!(parse_meminfo_total_mib("MemTotal: 5 parsecs"), None);
        assert_eq!(parse_meminfo_total_mib(""), None);
    }

    #[test]
    fn detect_host_reads_this_machine() {
        let facts = detect_host(&std::env::temp_dir());
        assert!(facts.cpu_cores >= 1);
        if cfg!(target_os = "linux") {
            assert!(facts.ram_mib > 0, "{facts:?}");
        }
        // Disk may be legitimately 0 GiB free on a full CI disk; only check it is sane.
        assert!(facts.disk_gib < 1 << 40);
    }

    #[test]
    fn missing_data_dir_measures_its_parent() {
        let base = std::env::temp_dir();
        let missing = base.join("gpumesh-inventory-test-does-not-exist").join("deeper");
        assert!(!missing.exists());
        assert_eq!(existing_ancestor(&missing), Some(base.as_path()));
        // Other processes may write in between: allow a GiB boundary to be crossed.
        assert!(detect_host(&missing).disk_gib.abs_diff(detect_host(&base).disk_gib) <= 1);
    }

    #[test]
    fn odd_data_dirs_do_not_panic() {
        let _ = detect_host(Path::new(""));
        let _ = detect_host(Path::new("relative/not/there"));
        let _ = detect_host(Path::new("/\u{0}bad"));
    }
}
