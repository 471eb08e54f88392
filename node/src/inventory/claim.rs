//! One node per GPU on a host. Every node on a machine detects the same GPUs, so two nodes
//! started there (say a service and a manual run, on different data dirs) would each offer
//! and lease the same cards, and one GPU could end up in two leases. Before it offers a
//! detected GPU, a node takes an exclusive lock on a file named after the GPU's UUID in a
//! directory shared by the host's nodes ([`DEFAULT_LOCK_DIR`] unless configured). A GPU
//! whose lock another process holds is left out. The operating system drops the locks when
//! the process exits, crashed or not, so nothing is left to clean up.
//!
//! Simulated GPUs take no locks: their UUIDs come from the node's own key, so no two nodes
//! share one. When the directory cannot be used at all, the node offers its GPUs and says
//! why in the notes: one node per host is the common case, and refusing to offer there
//! would be worse than the risk the lock guards against.

use super::{DetectedGpu, GpuSource};
use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

/// Where nodes on a host keep their GPU locks when the config names no other place. A fixed
/// path, not `$TMPDIR`: nodes started by different users or services must meet in it.
pub const DEFAULT_LOCK_DIR: &str = "/tmp/gpumesh-gpu-locks";

/// The locks this node holds; they are released when this is dropped (or the process ends).
#[derive(Debug, Default)]
pub struct GpuClaims {
    files: Vec<File>,
}

impl GpuClaims {
    /// How many GPUs this node holds a lock on.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// What [`claim`] decided.
#[derive(Debug)]
pub struct Claimed {
    /// The GPUs this node may offer: the simulated ones, those it locked, and all of them
    /// when the lock directory could not be used.
    pub gpus: Vec<DetectedGpu>,
    /// Hold this for as long as the GPUs are offered.
    pub claims: GpuClaims,
    /// For people: GPUs left out and why, or why no lock could be taken.
    pub notes: Vec<String>,
}

/// Locks each detected (not simulated) GPU in `dir` and keeps those it could lock.
pub fn claim(gpus: Vec<DetectedGpu>, dir: &Path) -> Claimed {
    let mut claims = GpuClaims::default();
    let mut notes = Vec::new();
    if gpus.iter().all(|g| g.source == GpuSource::Simulated) {
        return Claimed { gpus, claims, notes };
    }
    if let Err(e) = prepare_dir(dir) {
        notes.push(format!(
            "cannot use {} for GPU locks ({e}): offering every GPU without checking that no other \
             gpumesh node on this host offers them; set `gpu_lock_dir` to a directory this user can write",
            dir.display()
        ));
        return Claimed { gpus, claims, notes };
    }
    let mut kept = Vec::with_capacity(gpus.len());
    for g in gpus {
        if g.source == GpuSource::Simulated {
            kept.push(g);
            continue;
        }
        let path = dir.join(lock_file_name(&g.uuid));
        match lock(&path) {
            Ok(file) => {
                claims.files.push(file);
                kept.push(g);
            }
            Err(LockError::Held) => notes.push(format!(
                "GPU {} ({}) is offered by another gpumesh node on this host (it holds {}); not offering it",
                g.index,
                g.uuid,
                path.display()
            )),
            Err(LockError::Io(e)) => {
                notes.push(format!(
                    "cannot lock {} ({e}): offering GPU {} without checking for another node on this host",
                    path.display(),
                    g.index
                ));
                kept.push(g);
            }
        }
    }
    Claimed { gpus: kept, claims, notes }
}

/// Creates the directory if needed. A new directory is made writable by every user, with
/// the sticky bit as in `/tmp`, so that nodes run by other users can lock their GPUs too.
fn prepare_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777))?;
    }
    Ok(())
}

/// The lock file of a GPU: its UUID with anything but ASCII letters, digits, `-` and `_`
/// replaced, so that a driver's odd UUID cannot name a path outside the directory.
fn lock_file_name(uuid: &str) -> String {
    let safe: String = uuid
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    format!("{safe}.lock")
}

enum LockError {
    Held,
    Io(std::io::Error),
}

fn lock(path: &Path) -> Result<File, LockError> {
    // A lock needs no write access: a file another user created is opened read-only.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .or_else(|_| File::open(path))
        .map_err(LockError::Io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(LockError::Held),
        Err(TryLockError::Error(e)) => Err(LockError::Io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, uuid: &str, source: GpuSource) -> DetectedGpu {
        let mut g = crate::inventory::simulate("RTX-4090:1", b"claim-test").unwrap().remove(0);
        g.index = index;
        g.uuid = uuid.into();
        g.source = source;
        g
    }

    fn uuids(gpus: &[DetectedGpu]) -> Vec<&str> {
        gpus.iter().map(|g| g.uuid.as_str()).collect()
    }

    #[test]
    fn a_second_node_on_the_host_does_not_offer_gpus_the_first_holds_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("locks");
        let detected = vec![gpu(0, "GPU-aaaa", GpuSource::Nvml), gpu(1, "GPU-bbbb", GpuSource::Nvml)];
        let first = claim(detected.clone(), &locks);
        assert_eq!(uuids(&first.gpus), ["GPU-aaaa", "GPU-bbbb"]);
        assert_eq!(first.claims.len(), 2);
        assert!(first.notes.is_empty(), "{:?}", first.notes);

        // Another node (a separate open of the same files) finds both taken.
        let second = claim(detected.clone(), &locks);
        assert!(second.gpus.is_empty(), "{:?}", uuids(&second.gpus));
        assert_eq!(second.notes.len(), 2);
        assert!(second.notes[0].contains("GPU-aaaa") && second.notes[0].contains("another gpumesh node"));

        // The first node stops: its locks go with it.
        drop(first);
        let third = claim(detected, &locks);
        assert_eq!(uuids(&third.gpus), ["GPU-aaaa", "GPU-bbbb"]);
    }

    #[test]
    fn simulated_gpus_take_no_locks() {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("locks");
        let sim = vec![gpu(0, "GPU-sim", GpuSource::Simulated)];
        let a = claim(sim.clone(), &locks);
        let b = claim(sim, &locks);
        assert_eq!((a.gpus.len(), b.gpus.len()), (1, 1));
        assert!(a.claims.is_empty() && !locks.exists(), "no lock directory is made for simulated GPUs");
    }

    #[test]
    fn an_unusable_lock_directory_offers_every_gpu_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the directory should be: it cannot be created, even by root.
        let not_a_dir = dir.path().join("file");
        std::fs::write(&not_a_dir, b"").unwrap();
        let c = claim(vec![gpu(0, "GPU-aaaa", GpuSource::NvidiaSmi)], &not_a_dir.join("locks"));
        assert_eq!(c.gpus.len(), 1);
        assert!(c.claims.is_empty());
        assert!(c.notes[0].contains("gpu_lock_dir"), "{:?}", c.notes);
    }

    #[test]
    fn odd_uuids_cannot_name_a_path_outside_the_directory() {
        assert_eq!(lock_file_name("GPU-12ab-34cd"), "GPU-12ab-34cd.lock");
        assert_eq!(lock_file_name("../../etc/passwd"), "______etc_passwd.lock");
        assert_eq!(lock_file_name("MIG-1/2"), "MIG-1_2.lock");
    }
}
