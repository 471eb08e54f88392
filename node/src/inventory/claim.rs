//! One node per GPU on a host. Every node on a machine detects the same GPUs, so two nodes
//! started there (say a service and a manual run, on different data dirs) would each offer
//! and lease the same cards, and one GPU could end up in two leases. Before it offers a
//! detected GPU, a node takes an exclusive lock on a file named after the GPU's UUID in a
//! directory shared by the host's nodes ([`DEFAULT_LOCK_DIR`] unless configured), and
//! writes its node id into the file. A GPU is left out when another process holds the lock,
//! or when the file names another node: a node that stopped, or crashed, may still have
//! leases running on the GPU, so the file keeps its id until it stops cleanly with no live
//! lease there ([`GpuClaims::release`]). The operating system drops the lock itself when the
//! process exits.
//!
//! Simulated GPUs take no locks: their UUIDs come from the node's own key, so no two nodes
//! share one. MIG GPUs are never offered and take none either. When the directory cannot be
//! used at all, the node offers its GPUs and says why in the notes: one node per host is the
//! common case, and refusing to offer there would be worse than the risk the lock guards
//! against.

use super::{DetectedGpu, GpuSource};
use gpumesh_protocol::NodeId;
use std::collections::HashSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where nodes on a host keep their GPU locks when the config names no other place. A fixed
/// path, not `$TMPDIR`: nodes started by different users or services must meet in it.
pub const DEFAULT_LOCK_DIR: &str = "/tmp/gpumesh-gpu-locks";

/// A GPU this node holds the lock of.
#[derive(Debug)]
struct Held {
    uuid: String,
    path: PathBuf,
    file: File,
}

/// The locks this node holds. Dropping this (or the process ending) lets go of the locks
/// but leaves this node's id in the files; [`GpuClaims::release`] clears it first.
#[derive(Debug, Default)]
pub struct GpuClaims {
    held: Vec<Held>,
}

impl GpuClaims {
    /// How many GPUs this node holds a lock on.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Marks every lock file as in use now, so that cleaners of old files in `/tmp`
    /// (systemd-tmpfiles, tmpreaper) leave a long-running node's files alone.
    pub fn touch(&self) {
        let now = std::time::SystemTime::now();
        for h in &self.held {
            if let Err(e) = h.file.set_modified(now) {
                tracing::debug!(path = %h.path.display(), error = %e, "could not touch a GPU lock file");
            }
        }
    }

    /// A clean stop: clears this node's id from the files of GPUs without a live lease (any
    /// node may offer them next), keeps it where `leased` names the GPU, and lets go of
    /// every lock.
    pub fn release(self, leased: &HashSet<String>) {
        for h in &self.held {
            if leased.contains(&h.uuid) {
                tracing::info!(gpu = %h.uuid, "a lease on this GPU is still live: it stays this node's");
            } else if let Err(e) = h.file.set_len(0) {
                tracing::warn!(path = %h.path.display(), error = %e, "could not clear a GPU lock file");
            }
        }
    }
}

/// What [`claim`] decided.
#[derive(Debug)]
pub struct Claimed {
    /// The GPUs this node may offer: the simulated ones, the MIG ones (never offered), those
    /// it locked, and all of them when the lock directory could not be used.
    pub gpus: Vec<DetectedGpu>,
    /// Hold this for as long as the GPUs are offered.
    pub claims: GpuClaims,
    /// For people: GPUs left out and why, or why no lock could be taken.
    pub notes: Vec<String>,
}

/// Locks each detected (not simulated, not MIG) GPU in `dir` for node `me`, and keeps those
/// it could lock and that no other node's file names.
pub fn claim(gpus: Vec<DetectedGpu>, dir: &Path, me: &NodeId) -> Claimed {
    let mut claims = GpuClaims::default();
    let mut notes = Vec::new();
    let needs_lock = |g: &DetectedGpu| g.source != GpuSource::Simulated && !g.mig;
    if !gpus.iter().any(needs_lock) {
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
    let me = me.to_string();
    let mut kept = Vec::with_capacity(gpus.len());
    for g in gpus {
        if !needs_lock(&g) {
            kept.push(g);
            continue;
        }
        let path = dir.join(lock_file_name(&g.uuid));
        match lock(&path, &me) {
            Ok(file) => {
                claims.held.push(Held { uuid: g.uuid.clone(), path, file });
                kept.push(g);
            }
            Err(LockError::Held) => notes.push(format!(
                "GPU {} ({}) is offered by another gpumesh node on this host (it holds {}); not offering it",
                g.index,
                g.uuid,
                path.display()
            )),
            Err(LockError::Owned(other)) => notes.push(format!(
                "GPU {} ({}) was last offered by node {other}, which is not running and may still have \
                 leases on it; not offering it. Start that node again (it stops cleanly once its leases \
                 end), or delete {} if that node is gone for good",
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
/// the sticky bit as in `/tmp`, so that nodes run by other users can lock their GPUs too
/// (if another user's node made it at the same moment, it is theirs to set: not an error).
fn prepare_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777));
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

#[derive(Debug)]
enum LockError {
    /// Another process holds the lock.
    Held,
    /// Nobody holds the lock, but the file names another node.
    Owned(String),
    Io(std::io::Error),
}

/// Opens (or creates) the lock file, locks it, and records `me` in it unless another node's
/// id is there. Never follows a symbolic link and never waits on a special file: the
/// directory may be writable by other users.
fn lock(path: &Path, me: &str) -> Result<File, LockError> {
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK;
    let open = |write: bool| {
        OpenOptions::new()
            .read(true)
            .write(write)
            .create(write)
            .truncate(false)
            .custom_flags(flags)
            .mode(0o644)
            .open(path)
    };
    // A lock needs no write access: a file another user created is opened read-only.
    let mut file = match open(true) {
        Ok(f) => {
            // Readable by every user's node whatever this process's umask (ignored if the
            // file is another user's).
            let _ = f.set_permissions(std::fs::Permissions::from_mode(0o644));
            f
        }
        Err(_) => open(false).map_err(LockError::Io)?,
    };
    if !file.metadata().map_err(LockError::Io)?.is_file() {
        return Err(LockError::Io(std::io::Error::other("not a regular file")));
    }
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Err(LockError::Held),
        Err(TryLockError::Error(e)) => return Err(LockError::Io(e)),
    }
    let mut owner = String::new();
    // Node ids are short; anything longer is not one of ours.
    (&mut file).take(256).read_to_string(&mut owner).map_err(LockError::Io)?;
    let owner = owner.trim();
    if !owner.is_empty() && owner != me {
        return Err(LockError::Owned(owner.to_string()));
    }
    if owner.is_empty() {
        // Durable, so that a crash of this machine does not forget whose leases may run here.
        let record = file.set_len(0).and_then(|()| file.write_all_at(format!("{me}\n").as_bytes(), 0));
        if let Err(e) = record.and_then(|()| file.sync_data()) {
            tracing::warn!(path = %path.display(), error = %e, "could not record this node in a GPU lock file");
        }
    }
    Ok(file)
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

    fn node(n: u8) -> NodeId {
        NodeId::from_bytes([n; 32])
    }

    fn two_gpus() -> Vec<DetectedGpu> {
        vec![gpu(0, "GPU-aaaa", GpuSource::Nvml), gpu(1, "GPU-bbbb", GpuSource::Nvml)]
    }

    #[test]
    fn a_second_node_on_the_host_does_not_offer_gpus_the_first_holds() {
        let dir = tempfile::tempdir().unwrap();
        let first = claim(two_gpus(), dir.path(), &node(1));
        assert_eq!(uuids(&first.gpus), ["GPU-aaaa", "GPU-bbbb"]);
        assert_eq!(first.claims.len(), 2);
        assert!(first.notes.is_empty(), "{:?}", first.notes);

        // Another node (a separate open of the same files) finds both locked.
        let second = claim(two_gpus(), dir.path(), &node(2));
        assert!(second.gpus.is_empty(), "{:?}", uuids(&second.gpus));
        assert_eq!(second.notes.len(), 2);
        assert!(second.notes[0].contains("GPU-aaaa") && second.notes[0].contains("another gpumesh node"));
    }

    /// A clean stop hands over the GPUs without a live lease and keeps the others; a crash
    /// keeps them all, since leases may still run there. The node that owns a GPU takes it
    /// back when it starts again.
    #[test]
    fn gpus_a_stopped_node_may_still_have_leases_on_stay_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let a = claim(two_gpus(), dir.path(), &node(1));
        a.claims.release(&HashSet::from(["GPU-aaaa".to_string()]));

        let b = claim(two_gpus(), dir.path(), &node(2));
        assert_eq!(uuids(&b.gpus), ["GPU-bbbb"], "only the GPU without a lease moves on");
        assert!(
            b.notes[0].contains(&node(1).to_string()) && b.notes[0].contains("not running"),
            "{:?}",
            b.notes
        );
        drop(b); // a crash: B's id stays in the file of GPU-bbbb

        let a = claim(two_gpus(), dir.path(), &node(1));
        assert_eq!(uuids(&a.gpus), ["GPU-aaaa"], "A takes back its own GPU, not the one B may lease");
        a.claims.release(&HashSet::new());
        let b = claim(two_gpus(), dir.path(), &node(2));
        assert_eq!(uuids(&b.gpus), ["GPU-aaaa", "GPU-bbbb"]);
    }

    #[test]
    fn simulated_and_mig_gpus_take_no_locks() {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("locks");
        let mut mig = gpu(1, "GPU-mig", GpuSource::Nvml);
        mig.mig = true;
        let gpus = vec![gpu(0, "GPU-sim", GpuSource::Simulated), mig];
        let a = claim(gpus.clone(), &locks, &node(1));
        let b = claim(gpus, &locks, &node(2));
        assert_eq!((a.gpus.len(), b.gpus.len()), (2, 2));
        assert!(a.claims.is_empty() && !locks.exists(), "no lock directory is made");
    }

    #[test]
    fn an_unusable_lock_directory_offers_every_gpu_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the directory should be: it cannot be created, even by root.
        let not_a_dir = dir.path().join("file");
        std::fs::write(&not_a_dir, b"").unwrap();
        let c = claim(vec![gpu(0, "GPU-aaaa", GpuSource::NvidiaSmi)], &not_a_dir.join("locks"), &node(1));
        assert_eq!(c.gpus.len(), 1);
        assert!(c.claims.is_empty());
        assert!(c.notes[0].contains("gpu_lock_dir"), "{:?}", c.notes);
    }

    /// The directory may be writable by others: a link planted where a lock file goes is
    /// not followed (a root node would otherwise create the file it points to), and a FIFO
    /// there does not hang the node.
    #[test]
    fn a_planted_link_or_fifo_is_neither_followed_nor_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::os::unix::fs::symlink(&target, dir.path().join("GPU-aaaa.lock")).unwrap();
        let fifo = dir.path().join("GPU-bbbb.lock");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let c = claim(two_gpus(), dir.path(), &node(1));
        assert!(!target.exists(), "the link was followed");
        assert!(c.claims.is_empty());
        assert_eq!(c.notes.len(), 2, "{:?}", c.notes);
        assert!(c.notes.iter().all(|n| n.starts_with("cannot lock")), "{:?}", c.notes);
    }

    #[test]
    fn odd_uuids_cannot_name_a_path_outside_the_directory() {
        assert_eq!(lock_file_name("GPU-12ab-34cd"), "GPU-12ab-34cd.lock");
        assert_eq!(lock_file_name("../../etc/passwd"), "______etc_passwd.lock");
        assert_eq!(lock_file_name("MIG-1/2"), "MIG-1_2.lock");
    }
}
