//! [`OfferBook`]: the pure rules of an offer book. Latest sequence per offer wins,
//! withdrawals remove (and leave a tombstone so an older copy cannot come back), expired offers
//! disappear, and each provider holds at most a configured number of offers. Storage and
//! networking live in the node; this is the decision logic and the in-memory index.

mod index;

pub use index::Hit;

use crate::envelope::Verified;
use crate::error::Invalid;
use crate::id::{NodeId, OfferId};
use crate::offer::{Offer, Withdrawal};
use crate::query::Query;
use crate::rank::SortKey;
use crate::time::Timestamp;
use index::Index;
use std::collections::{BTreeSet, HashMap};

/// One page of a book sync ([`OfferBook::sync_page`]).
#[derive(Debug)]
pub struct SyncPage<'a> {
    /// Signed offer bytes, in ascending offer id order.
    pub offers: Vec<&'a [u8]>,
    /// The id of the page's last offer when more follow it (the next request's `after`).
    pub next: Option<OfferId>,
}

/// Ranges of offer ids in a [`SyncDigest`]: one per value of an id's first byte.
pub const SYNC_RANGES: usize = 256;

/// A summary of a book for a sync (protocol.md §8.3): for each range of offer ids (the
/// ids whose first byte is the range's number), the sum, wrapping at 2^64, of the
/// [`fingerprint`]s of the offers held in it. Two books that hold the same offers in a
/// range have the same sum there; a peer answering a sync skips such ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncDigest(pub [u64; SYNC_RANGES]);

/// Bytes of a [`SyncDigest`] on the wire: each range's sum as 8 bytes, big-endian, range 0
/// first.
pub const SYNC_DIGEST_BYTES: usize = SYNC_RANGES * 8;

impl Default for SyncDigest {
    fn default() -> Self {
        SyncDigest([0; SYNC_RANGES])
    }
}

impl SyncDigest {
    /// The range an offer id belongs to.
    pub fn range_of(id: &OfferId) -> usize {
        id.as_bytes()[0] as usize
    }

    /// The digest of a set of offer envelopes (their ids and bytes).
    pub fn of<'a>(offers: impl IntoIterator<Item = (&'a OfferId, &'a [u8])>) -> SyncDigest {
        let mut d = SyncDigest::default();
        for (id, bytes) in offers {
            d.add(id, fingerprint(bytes));
        }
        d
    }

    fn add(&mut self, id: &OfferId, fingerprint: u64) {
        let r = &mut self.0[Self::range_of(id)];
        *r = r.wrapping_add(fingerprint);
    }

    fn remove(&mut self, id: &OfferId, fingerprint: u64) {
        let r = &mut self.0[Self::range_of(id)];
        *r = r.wrapping_sub(fingerprint);
    }

    /// Whether the two digests agree on the range of `id`.
    pub fn same_range(&self, other: &SyncDigest, id: &OfferId) -> bool {
        let r = Self::range_of(id);
        self.0[r] == other.0[r]
    }

    /// The wire form: [`SYNC_DIGEST_BYTES`] bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.iter().flat_map(|s| s.to_be_bytes()).collect()
    }

    /// Reads the wire form; `None` unless it is exactly [`SYNC_DIGEST_BYTES`] long.
    pub fn from_bytes(b: &[u8]) -> Option<SyncDigest> {
        if b.len() != SYNC_DIGEST_BYTES {
            return None;
        }
        let mut d = SyncDigest::default();
        for (sum, chunk) in d.0.iter_mut().zip(b.chunks_exact(8)) {
            *sum = u64::from_be_bytes(chunk.try_into().expect("chunks of 8"));
        }
        Some(d)
    }
}

/// An offer envelope's fingerprint in a [`SyncDigest`]: the first 8 bytes of the SHA-256 of
/// the envelope's bytes (the first 8 bytes of its gossip message id), read big-endian.
pub fn fingerprint(envelope: &[u8]) -> u64 {
    let h = crate::bytes::Digest32::of(envelope);
    u64::from_be_bytes(h.0[..8].try_into().expect("a SHA-256 is 32 bytes"))
}

/// Tunables of an [`OfferBook`].
#[derive(Clone, Copy, Debug)]
pub struct BookConfig {
    /// Most offers (and, separately, tombstones) kept per provider.
    pub max_offers_per_provider: usize,
    /// How long a tombstone is kept after its withdrawal was issued, ms (the longest TTL an
    /// offer may have, so no live copy of the retired offer can outlast it).
    pub tombstone_ttl_ms: u64,
}

impl Default for BookConfig {
    fn default() -> Self {
        BookConfig { max_offers_per_provider: 64, tombstone_ttl_ms: 60 * 60 * 1000 }
    }
}

/// What an accepted message changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BookChange {
    /// A new offer id entered the book.
    Added(OfferId),
    /// A newer sequence of a known offer replaced the old one.
    Replaced(OfferId),
    /// An offer left the book (withdrawn).
    Removed(OfferId),
    /// A withdrawal for an offer the book never held: only a tombstone was recorded.
    Tombstoned(OfferId),
}

#[derive(Clone, Debug)]
struct Tombstone {
    provider: NodeId,
    seq: u64,
    until: Timestamp,
}

/// The set of current, validated offers.
#[derive(Debug, Default)]
pub struct OfferBook {
    config: BookConfig,
    index: Index,
    tombstones: HashMap<(NodeId, OfferId), Tombstone>,
    tombstones_per_provider: HashMap<NodeId, usize>,
    expiry: BTreeSet<(Timestamp, OfferId)>,
}

impl OfferBook {
    /// An empty book.
    pub fn new(config: BookConfig) -> OfferBook {
        OfferBook { config, ..OfferBook::default() }
    }

    /// Admits an offer that already passed [`Offer::validate`]. Refuses a sequence that is
    /// not newer than the held one or than a withdrawal of the same offer, a duplicate, and a
    /// new offer from a provider at its cap.
    pub fn insert(&mut self, offer: Verified<Offer>, now: Timestamp) -> Result<BookChange, Invalid> {
        let id = offer.offer_id;
        if offer.is_expired(now) {
            return Err(Invalid::Expired { expires_at: offer.expires_at, now });
        }
        if let Some(t) = self.tombstones.get(&(offer.provider, id))
            && t.until > now
            && offer.seq <= t.seq
        {
            return Err(Invalid::StaleSequence { seq: offer.seq, latest: t.seq });
        }
        if let Some(held) = self.index.get(&id) {
            if *held.bytes == *offer.bytes() {
                return Err(Invalid::Duplicate);
            }
            if offer.seq <= held.seq {
                return Err(Invalid::StaleSequence { seq: offer.seq, latest: held.seq });
            }
            // Same id means same provider: the id is derived from the provider's key.
            self.expiry.remove(&(held.expires_at, id));
            self.expiry.insert((offer.expires_at, id));
            self.index.put(offer);
            return Ok(BookChange::Replaced(id));
        }
        if self.index.count_of(&offer.provider) >= self.config.max_offers_per_provider {
            return Err(Invalid::ProviderCapReached);
        }
        self.expiry.insert((offer.expires_at, id));
        self.index.put(offer);
        Ok(BookChange::Added(id))
    }

    /// Applies a withdrawal that already passed [`Withdrawal::validate`].
    pub fn withdraw(&mut self, w: &Verified<Withdrawal>, now: Timestamp) -> Result<BookChange, Invalid> {
        let id = w.offer_id;
        if let Some(held) = self.index.get(&id) {
            if held.provider != w.provider {
                return Err(Invalid::NotOwner);
            }
            if w.seq <= held.seq {
                return Err(Invalid::StaleSequence { seq: w.seq, latest: held.seq });
            }
        }
        let key = (w.provider, id);
        match self.tombstones.get(&key) {
            Some(t) if t.seq >= w.seq => return Err(Invalid::Duplicate),
            Some(_) => {}
            None => {
                let count = self.tombstones_per_provider.get(&w.provider).copied().unwrap_or(0);
                if count >= self.config.max_offers_per_provider {
                    return Err(Invalid::ProviderCapReached);
                }
                *self.tombstones_per_provider.entry(w.provider).or_default() += 1;
            }
        }
        let until = w.issued_at.plus_millis(self.config.tombstone_ttl_ms).max(now);
        self.tombstones.insert(key, Tombstone { provider: w.provider, seq: w.seq, until });
        Ok(if self.remove(&id) { BookChange::Removed(id) } else { BookChange::Tombstoned(id) })
    }

    /// Removes an offer; whether the book held it.
    fn remove(&mut self, id: &OfferId) -> bool {
        let Some(held) = self.index.remove(id) else { return false };
        self.expiry.remove(&(held.expires_at, *id));
        true
    }

    /// Removes every offer expired at `now` and every stale tombstone; returns the removed
    /// offer ids.
    pub fn sweep(&mut self, now: Timestamp) -> Vec<OfferId> {
        let mut gone = Vec::new();
        while let Some(&(at, id)) = self.expiry.first() {
            if at > now {
                break;
            }
            self.remove(&id);
            gone.push(id);
        }
        let before = self.tombstones.len();
        if before > 0 {
            let per = &mut self.tombstones_per_provider;
            self.tombstones.retain(|_, t| {
                let keep = t.until > now;
                if !keep && let Some(c) = per.get_mut(&t.provider) {
                    *c = c.saturating_sub(1);
                }
                keep
            });
            per.retain(|_, c| *c > 0);
        }
        gone
    }

    /// The offer with this id, unless expired at `now` (decoded from the bytes the book
    /// keeps: a few microseconds).
    pub fn get(&self, id: &OfferId, now: Timestamp) -> Option<Verified<Offer>> {
        self.live_slot(id, now).map(|s| s.offer())
    }

    /// Whether `envelope` is, byte for byte, the signed offer the book holds under its id,
    /// unexpired at `now`. Such a copy needs no verification: the same bytes were verified
    /// and validated when they were admitted, and nothing in that decision but expiry depends
    /// on the time. Nodes meet such copies in every book sync with a peer whose offers they
    /// already hold. Reads only the envelope's head and the body's first fields.
    pub fn holds_copy(&self, envelope: &[u8], now: Timestamp) -> bool {
        let Ok(raw) = crate::envelope::RawEnvelope::parse(envelope) else { return false };
        if raw.kind != crate::envelope::Kind::Offer {
            return false;
        }
        let Some(id) = crate::offer_cbor::peek_offer_id(raw.body) else { return false };
        self.live_slot(&id, now).is_some_and(|s| *s.bytes == *envelope)
    }

    /// The sequence of the held offer with this id, unless expired at `now` (no decoding).
    pub fn seq(&self, id: &OfferId, now: Timestamp) -> Option<u64> {
        self.live_slot(id, now).map(|s| s.seq)
    }

    fn live_slot(&self, id: &OfferId, now: Timestamp) -> Option<&index::Slot> {
        self.index.get(id).filter(|s| s.expires_at > now)
    }

    /// Every offer not expired at `now`, in no particular order, each decoded; prefer
    /// [`OfferBook::live_bytes`], [`OfferBook::live_ids`] or [`OfferBook::live_providers`]
    /// where they are enough.
    pub fn live(&self, now: Timestamp) -> impl Iterator<Item = Verified<Offer>> + '_ {
        self.live_slots(now).map(|s| s.offer())
    }

    /// The book's [`SyncDigest`]: of every offer it holds, including any that expired since
    /// the last [`OfferBook::sweep`] (a peer then sees their range differ and sends it).
    pub fn sync_digest(&self) -> &SyncDigest {
        self.index.digest()
    }

    /// One page of a book sync: the signed bytes of the offers not expired at `now` whose id
    /// sorts above `after` and, when the asking peer sent its digest `have`, whose range sums
    /// differ between `have` and this book's digest; lowest ids first, as many as fit in
    /// `max_offers` and in `max_bytes` (each offer counted as its length plus `framing`
    /// bytes). A page holds at least one offer when any is left, so paging always moves on.
    /// `next` is the last id in the page when more offers follow it.
    pub fn sync_page(
        &self,
        after: Option<&OfferId>,
        have: Option<&SyncDigest>,
        now: Timestamp,
        max_offers: usize,
        max_bytes: usize,
        framing: usize,
    ) -> SyncPage<'_> {
        let max_offers = max_offers.max(1);
        let ours = self.index.digest();
        let mut rest: Vec<&index::Slot> = self
            .live_slots(now)
            .filter(|s| after.is_none_or(|a| s.offer_id > *a))
            .filter(|s| have.is_none_or(|h| !h.same_range(ours, &s.offer_id)))
            .collect();
        let mut cut = rest.len() > max_offers;
        if cut {
            // The lowest `max_offers` ids, without sorting the whole book.
            rest.select_nth_unstable_by_key(max_offers, |s| s.offer_id);
            rest.truncate(max_offers);
        }
        rest.sort_unstable_by_key(|s| s.offer_id);
        let (mut offers, mut total, mut last) = (Vec::with_capacity(rest.len()), 0usize, None);
        for s in rest {
            total += s.bytes.len() + framing;
            if total > max_bytes && !offers.is_empty() {
                cut = true;
                break;
            }
            offers.push(&s.bytes[..]);
            last = Some(s.offer_id);
        }
        SyncPage { offers, next: if cut { last } else { None } }
    }

    /// The id of every offer not expired at `now`.
    pub fn live_ids(&self, now: Timestamp) -> impl Iterator<Item = &OfferId> {
        self.live_slots(now).map(|s| &s.offer_id)
    }

    /// The provider of every offer not expired at `now` (once per offer).
    pub fn live_providers(&self, now: Timestamp) -> impl Iterator<Item = &NodeId> {
        self.live_slots(now).map(|s| &s.provider)
    }

    fn live_slots(&self, now: Timestamp) -> impl Iterator<Item = &index::Slot> {
        self.index.all().filter(move |s| s.expires_at > now)
    }

    /// Offers of one provider, not expired at `now`, decoded.
    pub fn by_provider(
        &self,
        provider: NodeId,
        now: Timestamp,
    ) -> impl Iterator<Item = Verified<Offer>> + '_ {
        self.index.of_provider(&provider).filter(move |s| s.expires_at > now).map(|s| s.offer())
    }

    /// The offers not expired at `now` that match `query`, best first by `key` (see
    /// [`crate::rank`]), at most `limit`, with their scores (computed for
    /// [`SortKey::Score`] only; 0 otherwise). Latency is each provider's as recorded with
    /// [`OfferBook::set_latency`]. Served from the index: spec, provider and region terms are
    /// evaluated once per GPU group, provider and region, numeric terms on compact rows, and
    /// only the best `limit` are sorted.
    pub fn search(
        &self,
        query: &Query,
        key: SortKey,
        latency_weight: f64,
        limit: usize,
        now: Timestamp,
    ) -> Vec<Hit> {
        self.index.search(query, key, latency_weight, limit, now)
    }

    /// Records the measured round trip to a provider in ms, which searches rank and filter
    /// by; `None` forgets it (e.g. once disconnected). Kept for providers with no offer yet,
    /// so call it with `None` when a measurement no longer holds.
    pub fn set_latency(&mut self, provider: NodeId, latency_ms: Option<u32>) {
        self.index.set_latency(provider, latency_ms);
    }

    /// The round trip to a provider in ms, as last recorded with [`OfferBook::set_latency`].
    pub fn latency(&self, provider: &NodeId) -> Option<u32> {
        self.index.latency(provider)
    }

    /// Number of offers held (expired ones included until the next sweep).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the book holds no offer.
    pub fn is_empty(&self) -> bool {
        self.index.len() == 0
    }

    /// Number of distinct providers with offers.
    pub fn providers(&self) -> usize {
        self.index.providers()
    }
}
