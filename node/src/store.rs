//! The node's durable state in sled, behind one type: [`Store`].
//!
//! Trees: `offers` (offer id → offer envelope), `leases_provider` (lease id → CBOR
//! `ProviderLease`), `gpus` (GPU uuid → lease id holding it), `leases_renter` (lease id → CBOR
//! `RenterLease`), `meta` (`seq` → the provider's last used sequence number, big-endian u64).
//!
//! What is flushed before it counts: a provider lease (grant, end); a renter's request
//! (flushed while it travels, on disk before a grant is reported) and every other renter
//! outcome except the grant itself (a restart that finds the request asks the provider, whose
//! grant is durable, for it again). What is not: offers and the sequence counter (kept above
//! the wall clock instead).
//!
//! A provider lease and its GPU reservations are written in one transaction that refuses to
//! reserve a GPU another live lease holds, then flushed: a grant never leaves the node before
//! that. Every flush goes through the store's flusher thread, one at a time (see
//! [`Store::flush`]). Offers are not flushed one by one (sled flushes every 500 ms); losing the
//! last moment of gossip in a crash costs nothing, since offers are re-gossiped.

use gpumesh_protocol::lease::{ProviderLease, RenterLease};
use gpumesh_protocol::{LeaseId, OfferId};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use std::path::Path;
use tokio::sync::oneshot;

/// Storage failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error(
        "cannot open the store at {path}: {source}; if another gpumesh node uses this data dir, stop it first"
    )]
    Open { path: String, source: sled::Error },
    #[error("store error: {0}")]
    Sled(#[from] sled::Error),
    #[error("GPU {gpu} is already reserved by lease {holder}")]
    AlreadyReserved { gpu: String, holder: String },
    #[error("could not flush the store to disk: {0}")]
    Flush(String),
}

/// The sled database and its trees.
#[derive(Clone, Debug)]
pub struct Store {
    db: sled::Db,
    offers: sled::Tree,
    p_leases: sled::Tree,
    gpus: sled::Tree,
    r_leases: sled::Tree,
    meta: sled::Tree,
    flusher: Flusher,
}

/// Flushes a store on a thread of its own, one flush at a time; every request that arrives
/// while one runs is answered by the next (group commit). sled's `flush_async` would instead
/// hold one of sled's process-wide pool threads for the whole flush, waiting on writes that
/// the same pool runs: with enough flushes at once (a hundred concurrent leases in one
/// process) every pool thread waited and none wrote, and the process hung.
#[derive(Clone, Debug)]
struct Flusher(std::sync::Arc<FlusherThread>);

type FlushRequest = oneshot::Sender<Result<(), String>>;

#[derive(Debug)]
struct FlusherThread {
    requests: Option<std::sync::mpsc::Sender<FlushRequest>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    fn start(db: sled::Db) -> std::io::Result<Flusher> {
        let (requests, rx) = std::sync::mpsc::channel::<FlushRequest>();
        let thread = std::thread::Builder::new().name("gpumesh-flusher".into()).spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                batch.extend(rx.try_iter());
                // Everything the batch's callers wrote was written before they asked.
                let result = db.flush().map(|_| ()).map_err(|e| e.to_string());
                for done in batch {
                    let _ = done.send(result.clone());
                }
            }
        })?;
        Ok(Flusher(std::sync::Arc::new(FlusherThread { requests: Some(requests), thread: Some(thread) })))
    }

    fn request(&self, done: FlushRequest) -> bool {
        self.0.requests.as_ref().is_some_and(|r| r.send(done).is_ok())
    }
}

impl Drop for FlusherThread {
    /// The last handle on the store is gone: let the thread answer what is queued, and wait
    /// until it has dropped its handle on the database, so that the data dir can be opened
    /// again as soon as the store's owner is done with it.
    fn drop(&mut self) {
        self.requests.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A flush asked for with [`Store::flush_in_background`]; [`FlushTicket::wait`] says when it
/// is done.
#[derive(Debug)]
pub struct FlushTicket(Result<oneshot::Receiver<Result<(), String>>, String>);

impl FlushTicket {
    /// A ticket for a write that already failed: waiting on it reports `why`.
    pub fn failed(why: String) -> FlushTicket {
        FlushTicket(Err(why))
    }

    /// The flush's outcome if it is already over, without waiting; `None` while it runs.
    pub fn outcome(&mut self) -> Option<Result<(), StoreError>> {
        use tokio::sync::oneshot::error::TryRecvError;
        match &mut self.0 {
            Err(why) => Some(Err(StoreError::Flush(why.clone()))),
            Ok(rx) => match rx.try_recv() {
                Ok(result) => Some(result.map_err(StoreError::Flush)),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Closed) => {
                    Some(Err(StoreError::Flush("the flusher thread stopped".into())))
                }
            },
        }
    }

    /// Waits until everything written before the ticket was taken is on disk.
    pub async fn wait(self) -> Result<(), StoreError> {
        let rx = self.0.map_err(StoreError::Flush)?;
        match rx.await {
            Ok(result) => result.map_err(StoreError::Flush),
            Err(_) => Err(StoreError::Flush("the flusher thread stopped".into())),
        }
    }
}

/// sled's page cache, counted in sled's on-disk bytes. Large on purpose: the offer book holds
/// the very buffers sled keeps for offers ([`shared_buffer`]), so what sled keeps cached costs
/// nothing extra; what it evicts and later reads back from disk would be a second copy.
/// 256 MiB holds about 400k offers.
const STORE_CACHE: u64 = 256 * 1024 * 1024;

/// An offer envelope in sled's own buffer type, and a handle on the same buffer for the offer
/// book: written with [`OfferWriter::put`], the offer is then resident once, not twice.
/// (sled keeps the value it was given; measured with `--example sledmem`.)
pub fn shared_buffer(envelope: &[u8]) -> (sled::IVec, gpumesh_protocol::SharedBytes) {
    let stored = sled::IVec::from(envelope);
    (stored.clone(), gpumesh_protocol::SharedBytes::from_owner(stored))
}

impl Store {
    /// Opens (or creates) the store in `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::LowSpace)
            .cache_capacity(STORE_CACHE)
            .open()
            .map_err(|source| StoreError::Open { path: path.display().to_string(), source })?;
        Ok(Store {
            offers: db.open_tree("offers")?,
            p_leases: db.open_tree("leases_provider")?,
            gpus: db.open_tree("gpus")?,
            r_leases: db.open_tree("leases_renter")?,
            meta: db.open_tree("meta")?,
            flusher: Flusher::start(db.clone())
                .map_err(|e| StoreError::Flush(format!("cannot start the flusher thread: {e}")))?,
            db,
        })
    }

    /// Stores an offer envelope (not flushed). sled keeps `envelope` itself in its cache.
    pub fn put_offer(&self, id: &OfferId, envelope: sled::IVec) -> Result<(), StoreError> {
        self.offers.insert(id.as_bytes(), envelope)?;
        Ok(())
    }

    /// Removes an offer (not flushed).
    pub fn remove_offer(&self, id: &OfferId) -> Result<(), StoreError> {
        self.remove_offer_key(id.as_bytes())
    }

    /// Removes a stored offer by its key as [`Store::offers`] lists it (not flushed).
    pub fn remove_offer_key(&self, key: &[u8]) -> Result<(), StoreError> {
        self.offers.remove(key)?;
        Ok(())
    }

    /// Every stored offer: its key and its envelope (sled's own buffers). Entries sled cannot
    /// read are skipped (and counted).
    pub fn offers(&self) -> (Vec<(sled::IVec, sled::IVec)>, usize) {
        let mut bad = 0;
        let v = self
            .offers
            .iter()
            .filter_map(|r| match r {
                Ok(kv) => Some(kv),
                Err(_) => {
                    bad += 1;
                    None
                }
            })
            .collect();
        (v, bad)
    }

    /// Reserves the next provider sequence number: above every number used before and at
    /// least `at_least`. The counter is written but not flushed; callers pass the wall clock
    /// in milliseconds as `at_least`, which keeps numbers rising across a crash that loses the
    /// last write (as long as the clock does not go back and fewer than one offer per
    /// millisecond was published).
    pub fn next_seq(&self, at_least: u64) -> Result<u64, StoreError> {
        let mut next = 0;
        self.meta.fetch_and_update(b"seq", |old| {
            let last = old.and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0);
            next = last.saturating_add(1).max(at_least);
            Some(next.to_be_bytes().to_vec())
        })?;
        Ok(next)
    }

    /// Marks `gpu` as reserved by `holder` behind the lease engine's back, so that a test can
    /// make the next write of a lease on that GPU fail.
    #[cfg(test)]
    pub(crate) fn reserve_gpu_for_test(&self, gpu: &str, holder: &LeaseId) {
        self.gpus.insert(gpu.as_bytes(), holder.as_bytes().to_vec()).unwrap();
    }

    /// Puts back `lease` as it was on disk (its record, and its GPUs reserved), as if a later
    /// write of it had failed.
    #[cfg(test)]
    pub(crate) fn put_back_for_test(&self, lease: &ProviderLease) {
        let key = lease.lease_id.as_bytes().to_vec();
        self.p_leases.insert(&key[..], gpumesh_protocol::envelope::encode_body(lease)).unwrap();
        for g in &lease.gpus {
            self.reserve_gpu_for_test(&g.uuid, &lease.lease_id);
        }
    }

    /// Writes a provider lease and its GPU reservations atomically, then flushes. A live
    /// lease (starting or active) reserves its GPUs; a finished one releases them.
    pub async fn persist_provider_lease(&self, lease: &ProviderLease) -> Result<(), StoreError> {
        let key = lease.lease_id.as_bytes().to_vec();
        let value = gpumesh_protocol::envelope::encode_body(lease);
        let live = lease.state.is_live();
        let result = (&self.p_leases, &self.gpus).transaction(|(leases, gpus)| {
            for g in &lease.gpus {
                let holder = gpus.get(g.uuid.as_bytes())?;
                let ours = holder.as_deref() == Some(&key[..]);
                if live {
                    if let Some(h) = holder.filter(|_| !ours) {
                        return Err(ConflictableTransactionError::Abort(StoreError::AlreadyReserved {
                            gpu: g.uuid.clone(),
                            holder: lease_id_text(&h),
                        }));
                    }
                    gpus.insert(g.uuid.as_bytes(), key.clone())?;
                } else if ours {
                    gpus.remove(g.uuid.as_bytes())?;
                }
            }
            leases.insert(key.clone(), value.clone())?;
            Ok(())
        });
        match result {
            Ok(()) => {}
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        }
        self.flush().await?;
        Ok(())
    }

    /// Every provider lease, and the number of unreadable records skipped.
    pub fn provider_leases(&self) -> (Vec<ProviderLease>, usize) {
        decode_all(&self.p_leases)
    }

    /// GPU uuid → lease id, as reserved on disk.
    pub fn reservations(&self) -> Vec<(String, String)> {
        self.gpus
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), lease_id_text(&v)))
            .collect()
    }

    /// Writes a renter lease, and flushes it unless it is `requested` or `active` (the rules
    /// are on `RenterOutput::Persist`). A request is made durable by the caller with
    /// [`Store::flush_in_background`], while it travels; a grant needs no flush of its own,
    /// since the request on disk is enough to get it back from the provider after a crash.
    /// Rejects, failures and receipts are durable before this returns.
    pub async fn persist_renter_lease(&self, lease: &RenterLease) -> Result<(), StoreError> {
        use gpumesh_protocol::lease::LeaseState;
        let value = gpumesh_protocol::envelope::encode_body(lease);
        self.r_leases.insert(lease.lease_id.as_bytes(), value)?;
        if !matches!(lease.state, LeaseState::Requested | LeaseState::Active) {
            self.flush().await?;
        }
        Ok(())
    }

    /// Asks for everything written so far to be flushed, without waiting for it.
    pub fn flush_in_background(&self) -> FlushTicket {
        let (done, rx) = oneshot::channel();
        FlushTicket(if self.flusher.request(done) {
            Ok(rx)
        } else {
            Err("the flusher thread stopped".into())
        })
    }

    /// Every renter lease, and the number of unreadable records skipped.
    pub fn renter_leases(&self) -> (Vec<RenterLease>, usize) {
        decode_all(&self.r_leases)
    }

    /// Flushes everything to disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.flush_in_background().wait().await
    }
}

fn lease_id_text(bytes: &[u8]) -> String {
    bytes.try_into().map(|b| LeaseId::from_bytes(b).to_string()).unwrap_or_else(|_| hex::encode(bytes))
}

fn decode_all<T: serde::de::DeserializeOwned>(tree: &sled::Tree) -> (Vec<T>, usize) {
    let mut bad = 0;
    let mut out = Vec::new();
    for item in tree.iter() {
        match item
            .map_err(|_| ())
            .and_then(|(_, v)| gpumesh_protocol::envelope::decode_body::<T>(&v).map_err(|_| ()))
        {
            Ok(v) => out.push(v),
            Err(()) => bad += 1,
        }
    }
    (out, bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpumesh_protocol::lease::{GpuUnit, LeaseState};
    use gpumesh_protocol::{Bytes, NodeId, Price, Timestamp};

    /// Hundreds of flushes asked for at once, while lease transactions run, all finish and
    /// leave everything on disk. (With sled's own `flush_async` for each, as before, this
    /// hangs: every sled pool thread waits for writes that only that pool runs.) The scenario
    /// runs on a thread of its own so that a hang fails the test instead of stalling it.
    #[test]
    fn hundreds_of_flushes_at_once_all_finish_and_leave_everything_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let (finished, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let s = Store::open(&path).unwrap();
                let mut tickets = Vec::new();
                let mut leases = Vec::new();
                for i in 0..300u32 {
                    let mut l = lease(0, &format!("GPU-{i}"), LeaseState::Active);
                    let mut id = [0xab; 8];
                    id[..4].copy_from_slice(&i.to_be_bytes());
                    l.lease_id = LeaseId::from_bytes(id);
                    s.meta.insert(i.to_be_bytes(), vec![1; 100]).unwrap();
                    tickets.push(s.flush_in_background());
                    let s = s.clone();
                    leases.push(tokio::spawn(async move { s.persist_provider_lease(&l).await }));
                }
                for t in tickets {
                    t.wait().await.unwrap();
                }
                for l in leases {
                    l.await.unwrap().unwrap();
                }
            });
            drop(rt);
            let _ = finished.send(());
        });
        rx.recv_timeout(std::time::Duration::from_secs(60)).expect("every flush finished within a minute");
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.meta.len(), 300);
        assert_eq!(s.provider_leases().0.len(), 300);
    }

    #[test]
    fn the_store_keeps_the_very_buffer_the_book_shares() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let (stored, shared) = shared_buffer(&[7u8; 600]);
        assert_eq!(stored.as_ptr(), shared.as_ptr(), "one buffer, two handles");
        let id = OfferId::from_bytes([1; 8]);
        s.put_offer(&id, stored).unwrap();
        s.db.flush().unwrap();
        let back = s.offers.get(id.as_bytes()).unwrap().unwrap();
        // sled holds the buffer it was given, not a copy: the offer is resident once.
        assert_eq!(back.as_ptr(), shared.as_ptr());
        let (all, bad) = s.offers();
        assert_eq!((all.len(), bad), (1, 0));
        assert_eq!(all[0].1.as_ptr(), shared.as_ptr());
    }

    fn lease(id: u8, gpu: &str, state: LeaseState) -> ProviderLease {
        ProviderLease {
            lease_id: LeaseId::from_bytes([id; 8]),
            renter: NodeId::from_bytes([1; 32]),
            offer_id: OfferId::from_bytes([2; 8]),
            gpus: vec![GpuUnit { uuid: gpu.into(), index: 0 }],
            price: Price(1),
            start: Timestamp(1),
            end: Timestamp(2),
            state,
            request: Bytes(vec![]),
            ssh_key: None,
            access: String::new(),
            grant: None,
            receipt: None,
        }
    }

    #[tokio::test]
    async fn a_gpu_cannot_be_reserved_twice_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.persist_provider_lease(&lease(1, "GPU-a", LeaseState::Active)).await.unwrap();
        let err = s.persist_provider_lease(&lease(2, "GPU-a", LeaseState::Active)).await.unwrap_err();
        assert!(matches!(err, StoreError::AlreadyReserved { .. }), "{err}");
        // Ending the first frees the GPU for the second.
        s.persist_provider_lease(&lease(1, "GPU-a", LeaseState::Expired)).await.unwrap();
        s.persist_provider_lease(&lease(2, "GPU-a", LeaseState::Active)).await.unwrap();
        assert_eq!(s.reservations(), vec![("GPU-a".to_string(), LeaseId::from_bytes([2; 8]).to_string())]);
    }

    /// A ticket tells a flush's outcome without waiting: the flush's result once it is over,
    /// a failed write's error at once, and an error when the flusher can no longer answer.
    #[tokio::test]
    async fn a_flush_ticket_tells_its_outcome_without_waiting() {
        let failed = FlushTicket::failed("disk full".into()).outcome();
        assert!(matches!(&failed, Some(Err(StoreError::Flush(why))) if why == "disk full"), "{failed:?}");

        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.next_seq(0).unwrap();
        let mut ticket = s.flush_in_background();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let outcome = loop {
            if let Some(o) = ticket.outcome() {
                break o;
            }
            assert!(std::time::Instant::now() < deadline, "the flush did not finish within 10 s");
            tokio::task::yield_now().await;
        };
        assert!(outcome.is_ok(), "{outcome:?}");

        // The flusher is gone once the store is: a ticket whose answer can no longer come.
        let (tx, rx) = oneshot::channel::<Result<(), String>>();
        drop(tx);
        let orphan = FlushTicket(Ok(rx)).outcome();
        assert!(matches!(&orphan, Some(Err(StoreError::Flush(_)))), "{orphan:?}");
    }

    #[tokio::test]
    async fn leases_and_sequence_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.persist_provider_lease(&lease(1, "GPU-a", LeaseState::Active)).await.unwrap();
            assert_eq!(s.next_seq(0).unwrap(), 1);
            assert_eq!(s.next_seq(0).unwrap(), 2);
            assert_eq!(s.next_seq(100).unwrap(), 100);
            s.flush().await.unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.provider_leases().0.len(), 1);
        assert_eq!(s.next_seq(0).unwrap(), 101);
    }
}

/// Writes offers to the store on a thread of its own, so the event loop never waits for sled
/// on the gossip path. Offers need no durability (they are re-gossiped); what was handed over
/// is written in order, and [`OfferWriter::flush`] waits until everything before it is on
/// disk.
#[derive(Debug, Clone)]
pub struct OfferWriter {
    tx: std::sync::mpsc::Sender<WriteOp>,
}

#[derive(Debug)]
enum WriteOp {
    Put(OfferId, sled::IVec),
    Remove(OfferId),
    Flush(tokio::sync::oneshot::Sender<Result<(), String>>),
}

impl OfferWriter {
    /// Starts the writer thread for `store`. The thread ends once every `OfferWriter` clone
    /// is dropped; join the handle to know the store is released.
    pub fn start(store: Store) -> Result<(OfferWriter, std::thread::JoinHandle<()>), StoreError> {
        let (tx, rx) = std::sync::mpsc::channel::<WriteOp>();
        let thread = std::thread::Builder::new()
            .name("gpumesh-offer-writer".into())
            .spawn(move || {
                while let Ok(op) = rx.recv() {
                    let r = match op {
                        WriteOp::Put(id, bytes) => store.put_offer(&id, bytes),
                        WriteOp::Remove(id) => store.remove_offer(&id),
                        WriteOp::Flush(done) => {
                            let _ = done.send(store.db.flush().map(|_| ()).map_err(|e| e.to_string()));
                            Ok(())
                        }
                    };
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "writing an offer to the store failed");
                    }
                }
            })
            .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        Ok((OfferWriter { tx }, thread))
    }

    /// Queues an offer envelope for writing (see [`shared_buffer`]).
    pub fn put(&self, id: OfferId, envelope: sled::IVec) {
        let _ = self.tx.send(WriteOp::Put(id, envelope));
    }

    /// Queues an offer's removal.
    pub fn remove(&self, id: OfferId) {
        let _ = self.tx.send(WriteOp::Remove(id));
    }

    /// Waits until every queued write is applied and flushed.
    pub async fn flush(&self) -> Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx.send(WriteOp::Flush(tx)).map_err(|_| "offer writer stopped".to_string())?;
        rx.await.map_err(|_| "offer writer stopped".to_string())?
    }
}
