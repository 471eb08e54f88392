//! The offer book's in-memory index: offers' signed bytes in a slab (decoded again only when
//! an offer is read, e.g. a search's top results), their searchable values grouped by GPU
//! spec and stored column by column, and interned providers and regions. A search evaluates
//! each term only as often as its value can differ (once per GPU group, provider or region;
//! numeric terms once per offer, as a range test over one column, so it reads a few bytes
//! per offer). Each row also carries its provider's measured latency, so ranking by latency
//! reads nothing beyond the columns.

use crate::envelope::Verified;
use crate::id::{NodeId, OfferId};
use crate::offer::Offer;
use crate::query::{Field, Fields, OfferNumbers, Query, Scope, Term};
use crate::rank::{Ranges, RankKey, SortKey, cmp_latency, compare_keys, effective_weight};
use crate::spec::{ComputeCapability, Interconnect};
use crate::time::Timestamp;
use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::hash::Hash;

/// A row's latency when its provider's round trip has not been measured.
const NO_LATENCY: u32 = u32::MAX;

/// What the spec-scope terms of a query look at.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SpecKey {
    model: String,
    vram_mib: u32,
    cc: Option<ComputeCapability>,
    interconnect: Interconnect,
}

impl SpecKey {
    fn of(o: &Offer) -> SpecKey {
        SpecKey {
            model: o.gpu.model.clone(),
            vram_mib: o.gpu.vram_mib,
            cc: o.gpu.compute_capability,
            interconnect: o.gpu.interconnect,
        }
    }
}

/// The per-offer values terms compare, and where the offer lives: one row of [`Columns`].
#[derive(Clone, Copy, Debug)]
struct Row {
    nums: OfferNumbers,
    expires_at: Timestamp,
    provider: u32,
    region: u32,
    slot: u32,
    /// The provider's measured RTT in ms, or [`NO_LATENCY`].
    latency: u32,
}

/// The rows of one GPU group, column by column (row `i` is element `i` of each), so a term
/// reads only its own column.
#[derive(Debug, Default)]
struct Columns {
    gpu_free: Vec<u32>,
    cpu_cores: Vec<u32>,
    price: Vec<u64>,
    ram_mib: Vec<u64>,
    disk_gib: Vec<u64>,
    duration_s: Vec<u64>,
    expires_at: Vec<u64>,
    provider: Vec<u32>,
    region: Vec<u32>,
    slot: Vec<u32>,
    latency: Vec<u32>,
}

impl Columns {
    fn len(&self) -> usize {
        self.slot.len()
    }

    fn push(&mut self, r: Row) {
        self.gpu_free.push(r.nums.gpu_free);
        self.cpu_cores.push(r.nums.cpu_cores);
        self.price.push(r.nums.price_micros);
        self.ram_mib.push(r.nums.ram_mib);
        self.disk_gib.push(r.nums.disk_gib);
        self.duration_s.push(r.nums.max_duration_s);
        self.expires_at.push(r.expires_at.0);
        self.provider.push(r.provider);
        self.region.push(r.region);
        self.slot.push(r.slot);
        self.latency.push(r.latency);
    }

    /// Removes row `i`, moving the last row into its place; returns it.
    fn swap_remove(&mut self, i: usize) -> Row {
        Row {
            nums: OfferNumbers {
                gpu_free: self.gpu_free.swap_remove(i),
                cpu_cores: self.cpu_cores.swap_remove(i),
                price_micros: self.price.swap_remove(i),
                ram_mib: self.ram_mib.swap_remove(i),
                disk_gib: self.disk_gib.swap_remove(i),
                max_duration_s: self.duration_s.swap_remove(i),
            },
            expires_at: Timestamp(self.expires_at.swap_remove(i)),
            provider: self.provider.swap_remove(i),
            region: self.region.swap_remove(i),
            slot: self.slot.swap_remove(i),
            latency: self.latency.swap_remove(i),
        }
    }

    fn nums(&self, i: usize) -> OfferNumbers {
        OfferNumbers {
            gpu_free: self.gpu_free[i],
            cpu_cores: self.cpu_cores[i],
            price_micros: self.price[i],
            ram_mib: self.ram_mib[i],
            disk_gib: self.disk_gib[i],
            max_duration_s: self.duration_s[i],
        }
    }

    fn latency_ms(&self, i: usize) -> Option<u32> {
        let l = self.latency[i];
        (l != NO_LATENCY).then_some(l)
    }

    /// Clears `keep[i]` for every row whose value of `field` is outside `lo..=hi`.
    fn narrow(&self, keep: &mut [bool], field: Field, lo: u64, hi: u64) {
        fn within<T: Copy + Into<u64>>(keep: &mut [bool], col: &[T], lo: u64, hi: u64) {
            for (k, v) in keep.iter_mut().zip(col) {
                let v: u64 = (*v).into();
                *k &= (lo <= v) & (v <= hi);
            }
        }
        match field {
            Field::Count => within(keep, &self.gpu_free, lo, hi),
            Field::Cpu => within(keep, &self.cpu_cores, lo, hi),
            Field::Price => within(keep, &self.price, lo, hi),
            Field::Ram => within(keep, &self.ram_mib, lo, hi),
            Field::Disk => within(keep, &self.disk_gib, lo, hi),
            Field::Duration => within(keep, &self.duration_s, lo, hi),
            // Not an offer-scope field: `NumericTerm`s are only built for those.
            _ => {}
        }
    }
}

#[derive(Debug)]
struct Group {
    key: SpecKey,
    rows: Columns,
}

/// One held offer: its signed bytes (as verified on admission) and what the book decides
/// by without decoding them. The decoded offer is not kept: it is several times the size.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) bytes: crate::bytes::SharedBytes,
    pub(super) offer_id: OfferId,
    pub(super) provider: NodeId,
    pub(super) seq: u64,
    pub(super) expires_at: Timestamp,
    /// [`super::fingerprint`] of `bytes`, kept to take it out of the digest on removal.
    fingerprint: u64,
    group: u32,
    pos: u32,
}

impl Slot {
    /// The offer, decoded again from its verified bytes.
    pub(super) fn offer(&self) -> Verified<Offer> {
        // The bytes are those of a `Verified<Offer>` the book admitted.
        Verified::reopen(self.bytes.clone()).expect("held offer bytes decode")
    }
}

/// A search result: the offer, its provider's latency as ranked, and its score
/// ([`SortKey::Score`] only; 0 otherwise).
#[derive(Clone, Debug)]
pub struct Hit {
    pub offer: Verified<Offer>,
    pub latency_ms: Option<u32>,
    pub score: f64,
}

/// Interned values with reference counts; freed ids are reused.
#[derive(Debug)]
struct Interner<T: Eq + Hash + Clone> {
    ids: HashMap<T, u32>,
    values: Vec<Option<(T, usize)>>,
    free: Vec<u32>,
}

impl<T: Eq + Hash + Clone> Default for Interner<T> {
    fn default() -> Self {
        Interner { ids: HashMap::new(), values: Vec::new(), free: Vec::new() }
    }
}

impl<T: Eq + Hash + Clone> Interner<T> {
    fn acquire(&mut self, v: &T) -> u32 {
        if let Some(&id) = self.ids.get(v) {
            if let Some((_, n)) = &mut self.values[id as usize] {
                *n += 1;
            }
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.values[id as usize] = Some((v.clone(), 1));
                id
            }
            None => {
                self.values.push(Some((v.clone(), 1)));
                (self.values.len() - 1) as u32
            }
        };
        self.ids.insert(v.clone(), id);
        id
    }

    fn release(&mut self, id: u32) {
        let slot = &mut self.values[id as usize];
        if let Some((v, n)) = slot {
            *n -= 1;
            if *n == 0 {
                self.ids.remove(v);
                *slot = None;
                self.free.push(id);
            }
        }
    }

    fn get(&self, id: u32) -> &T {
        // Rows only refer to ids they acquired and have not released.
        &self.values[id as usize].as_ref().expect("interned id is live").0
    }

    fn capacity(&self) -> usize {
        self.values.len()
    }
}

/// The index. Every method keeps slots, groups, rows and interners consistent.
#[derive(Debug, Default)]
pub(super) struct Index {
    slots: Vec<Option<Slot>>,
    free_slots: Vec<u32>,
    by_id: HashMap<OfferId, u32>,
    groups: Vec<Option<Group>>,
    free_groups: Vec<u32>,
    group_of: HashMap<SpecKey, u32>,
    providers: Interner<NodeId>,
    regions: Interner<String>,
    by_provider: HashMap<NodeId, BTreeSet<OfferId>>,
    /// Measured RTTs, ms, of providers (held or not): every row of a provider carries its
    /// value.
    latencies: HashMap<NodeId, u32>,
    /// The sync digest of every held offer, kept as offers come and go.
    digest: super::SyncDigest,
}

impl Index {
    pub(super) fn digest(&self) -> &super::SyncDigest {
        &self.digest
    }

    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(super) fn providers(&self) -> usize {
        self.by_provider.len()
    }

    pub(super) fn get(&self, id: &OfferId) -> Option<&Slot> {
        self.by_id.get(id).and_then(|s| self.slots[*s as usize].as_ref())
    }

    pub(super) fn count_of(&self, provider: &NodeId) -> usize {
        self.by_provider.get(provider).map_or(0, BTreeSet::len)
    }

    pub(super) fn all(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().flatten()
    }

    pub(super) fn of_provider<'a>(&'a self, provider: &NodeId) -> impl Iterator<Item = &'a Slot> + use<'a> {
        self.by_provider.get(provider).into_iter().flatten().filter_map(|id| self.get(id))
    }

    /// Adds or replaces the offer with this id.
    pub(super) fn put(&mut self, offer: Verified<Offer>) {
        let id = offer.offer_id;
        if self.by_id.contains_key(&id) {
            self.remove(&id);
        }
        let key = SpecKey::of(&offer);
        let group = match self.group_of.get(&key) {
            Some(&g) => g,
            None => {
                let g = Group { key: key.clone(), rows: Columns::default() };
                let ix = match self.free_groups.pop() {
                    Some(ix) => {
                        self.groups[ix as usize] = Some(g);
                        ix
                    }
                    None => {
                        self.groups.push(Some(g));
                        (self.groups.len() - 1) as u32
                    }
                };
                self.group_of.insert(key, ix);
                ix
            }
        };
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        let row = Row {
            nums: OfferNumbers::of(offer.body()),
            expires_at: offer.expires_at,
            provider: self.providers.acquire(&offer.provider),
            region: self.regions.acquire(&offer.host.region),
            slot,
            latency: self.latencies.get(&offer.provider).copied().unwrap_or(NO_LATENCY),
        };
        let rows = &mut self.groups[group as usize].as_mut().expect("group just found or made").rows;
        rows.push(row);
        let pos = (rows.len() - 1) as u32;
        self.by_provider.entry(offer.provider).or_default().insert(id);
        let fingerprint = super::fingerprint(offer.bytes());
        self.digest.add(&id, fingerprint);
        self.slots[slot as usize] = Some(Slot {
            bytes: offer.shared_bytes(),
            fingerprint,
            offer_id: id,
            provider: offer.provider,
            seq: offer.seq,
            expires_at: offer.expires_at,
            group,
            pos,
        });
        self.by_id.insert(id, slot);
    }

    /// Removes an offer; returns what was held of it.
    pub(super) fn remove(&mut self, id: &OfferId) -> Option<Slot> {
        let slot_ix = self.by_id.remove(id)?;
        let slot = self.slots[slot_ix as usize].take()?;
        self.free_slots.push(slot_ix);
        self.digest.remove(id, slot.fingerprint);
        let group = self.groups[slot.group as usize].as_mut().expect("a slot's group exists");
        let row = group.rows.swap_remove(slot.pos as usize);
        if let Some(&moved) = group.rows.slot.get(slot.pos as usize)
            && let Some(s) = self.slots[moved as usize].as_mut()
        {
            s.pos = slot.pos;
        }
        if group.rows.len() == 0 {
            let key = group.key.clone();
            self.group_of.remove(&key);
            self.groups[slot.group as usize] = None;
            self.free_groups.push(slot.group);
        }
        self.providers.release(row.provider);
        self.regions.release(row.region);
        let provider = slot.provider;
        if let Some(set) = self.by_provider.get_mut(&provider) {
            set.remove(id);
            if set.is_empty() {
                self.by_provider.remove(&provider);
            }
        }
        Some(slot)
    }

    /// Records a provider's measured RTT in ms (`None`: not measured, e.g. disconnected) and
    /// writes it into the rows of the provider's offers.
    pub(super) fn set_latency(&mut self, provider: NodeId, latency_ms: Option<u32>) {
        let v = latency_ms.map_or(NO_LATENCY, |ms| ms.min(NO_LATENCY - 1));
        let changed = match latency_ms {
            Some(_) => self.latencies.insert(provider, v) != Some(v),
            None => self.latencies.remove(&provider).is_some(),
        };
        if !changed {
            return;
        }
        for id in self.by_provider.get(&provider).into_iter().flatten() {
            if let Some(slot) = self.by_id.get(id).and_then(|s| self.slots[*s as usize].as_ref())
                && let Some(group) = self.groups[slot.group as usize].as_mut()
            {
                group.rows.latency[slot.pos as usize] = v;
            }
        }
    }

    /// The provider's measured RTT in ms, as last recorded.
    pub(super) fn latency(&self, provider: &NodeId) -> Option<u32> {
        self.latencies.get(provider).copied()
    }

    /// The offers not expired at `now` that match `query`, ranked by `key`, at most `limit`,
    /// with providers' latencies as recorded by [`Index::set_latency`]. Scores are computed
    /// for [`SortKey::Score`] only (0 otherwise).
    pub(super) fn search(
        &self,
        query: &Query,
        key: SortKey,
        latency_weight: f64,
        limit: usize,
        now: Timestamp,
    ) -> Vec<Hit> {
        let w = effective_weight(latency_weight);
        let mut best = TopK::new(limit, key, w);
        if limit == 0 {
            return Vec::new();
        }
        match key {
            SortKey::Score => MATCHED.with_borrow_mut(|matched| {
                // Scores are normalised over every match: collect, then score and select.
                matched.clear();
                self.scan(query, now, |rows, i| {
                    matched.push((rows.slot[i], rows.price[i], rows.latency_ms(i)))
                });
                let ranges = Ranges::of(matched.iter().map(|m| (m.1, m.2)));
                for &(slot, price, lat) in matched.iter() {
                    if best.dominated(price, lat) {
                        continue;
                    }
                    let score = ranges.score(price, lat, w);
                    if best.beats_worst(score, price, lat) {
                        best.offer(self.rank_key(slot, score, price, lat), slot);
                    }
                }
                if matched.capacity() > MATCHED_KEEP {
                    *matched = Vec::new();
                }
            }),
            SortKey::Price | SortKey::Latency => {
                self.scan(query, now, |rows, i| {
                    let (price, lat) = (rows.price[i], rows.latency_ms(i));
                    if best.beats_worst(0.0, price, lat) {
                        best.offer(self.rank_key(rows.slot[i], 0.0, price, lat), rows.slot[i]);
                    }
                });
            }
        }
        best.into_sorted()
            .into_iter()
            .map(|(k, slot)| Hit { offer: self.slot(slot).offer(), latency_ms: k.latency_ms, score: k.score })
            .collect()
    }

    fn slot(&self, slot: u32) -> &Slot {
        self.slots[slot as usize].as_ref().expect("a row's slot is live")
    }

    fn rank_key(&self, slot: u32, score: f64, price_micros: u64, latency_ms: Option<u32>) -> RankKey<'_> {
        let s = self.slot(slot);
        RankKey { score, price_micros, latency_ms, offer_id: &s.offer_id, provider: &s.provider, seq: s.seq }
    }

    /// Calls `emit` with every row (its group's columns and its position) not expired at
    /// `now` that matches `query`. Spec terms are evaluated once per group; numeric terms
    /// that are a range (all but `!=`, `in`, `notin`) and the expiry as one pass over their
    /// column per group; provider and latency terms once per provider (every row of a
    /// provider carries the same latency); region terms once per region; the rest per row.
    fn scan(&self, query: &Query, now: Timestamp, mut emit: impl FnMut(&Columns, usize)) {
        let by_scope = |scope: Scope| -> Vec<&Term> {
            query.terms().iter().filter(|t| t.field().scope() == scope).collect()
        };
        let (spec_terms, provider_terms, region_terms) =
            (by_scope(Scope::Spec), by_scope(Scope::Provider), by_scope(Scope::Region));
        let (mut ranges, mut per_row) = (Vec::new(), Vec::new());
        for t in by_scope(Scope::Offer).iter().filter_map(|t| t.numeric()) {
            match t.range() {
                Some((lo, hi)) => ranges.push((t.field(), lo, hi)),
                None => per_row.push(t),
            }
        }
        let mut provider_cache: Vec<Option<bool>> =
            if provider_terms.is_empty() { Vec::new() } else { vec![None; self.providers.capacity()] };
        let mut region_cache: Vec<Option<bool>> =
            if region_terms.is_empty() { Vec::new() } else { vec![None; self.regions.capacity()] };
        let mut keep: Vec<bool> = Vec::new();
        for group in self.groups.iter().flatten() {
            let rows = &group.rows;
            if rows.len() == 0 {
                continue;
            }
            let view = |i: usize| RowView { index: self, group, i };
            if !spec_terms.iter().all(|t| t.matches(&view(0), None)) {
                continue;
            }
            keep.clear();
            keep.extend(rows.expires_at.iter().map(|&e| e > now.0));
            for &(field, lo, hi) in &ranges {
                rows.narrow(&mut keep, field, lo, hi);
            }
            for (i, _) in keep.iter().enumerate().filter(|(_, k)| **k) {
                if !provider_terms.is_empty() {
                    let lat = rows.latency_ms(i);
                    let ok = provider_cache[rows.provider[i] as usize]
                        .get_or_insert_with(|| provider_terms.iter().all(|t| t.matches(&view(i), lat)));
                    if !*ok {
                        continue;
                    }
                }
                if !region_terms.is_empty()
                    && !*region_cache[rows.region[i] as usize]
                        .get_or_insert_with(|| region_terms.iter().all(|t| t.matches(&view(i), None)))
                {
                    continue;
                }
                if per_row.is_empty() || {
                    let nums = rows.nums(i);
                    per_row.iter().all(|t| t.test(&nums))
                } {
                    emit(rows, i);
                }
            }
        }
    }
}

/// The best `limit` candidates seen so far (with their slots), under the order of
/// [`crate::rank::compare`].
struct TopK<'a> {
    limit: usize,
    key: SortKey,
    w: f64,
    heap: BinaryHeap<Ranked<'a>>,
}

/// A candidate ordered by the ranking order, worst greatest (so the heap's top is the worst).
struct Ranked<'a> {
    k: RankKey<'a>,
    slot: u32,
    key: SortKey,
    w: f64,
}

impl PartialEq for Ranked<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Ranked<'_> {}
impl PartialOrd for Ranked<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ranked<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_keys(self.key, self.w, &self.k, &other.k)
    }
}

impl<'a> TopK<'a> {
    fn new(limit: usize, key: SortKey, w: f64) -> TopK<'a> {
        TopK { limit, key, w, heap: BinaryHeap::with_capacity(limit.min(4096) + 1) }
    }

    /// Whether a candidate with this score, price and latency may rank before the worst kept
    /// one (always, until `limit` are kept). Decides from the row alone for most rows, so the
    /// slot is only read for real contenders; exact ties on these keys say yes and are
    /// settled by [`TopK::offer`].
    fn beats_worst(&self, score: f64, price: u64, latency_ms: Option<u32>) -> bool {
        let Some(worst) = self.heap.peek().filter(|_| self.heap.len() >= self.limit) else { return true };
        let w = &worst.k;
        let by_price = || price.cmp(&w.price_micros);
        let by_latency = || cmp_latency(latency_ms, w.latency_ms);
        let ord = match self.key {
            SortKey::Price => by_price().then_with(by_latency),
            SortKey::Latency => by_latency().then_with(by_price),
            SortKey::Score => {
                let measured_first = if self.w > 0.0 {
                    w.latency_ms.is_some().cmp(&latency_ms.is_some())
                } else {
                    Ordering::Equal
                };
                score.total_cmp(&w.score).then(measured_first).then_with(by_price).then_with(by_latency)
            }
        };
        ord != Ordering::Greater
    }

    /// Whether a candidate is certainly worse than the worst kept one under
    /// [`SortKey::Score`] without computing its score: a dearer offer whose latency is no
    /// lower (both measured, or both not) scores no better, since a score only grows with
    /// price and latency, and then loses the tie on price.
    fn dominated(&self, price: u64, latency_ms: Option<u32>) -> bool {
        let Some(worst) = self.heap.peek().filter(|_| self.heap.len() >= self.limit) else { return false };
        let w = &worst.k;
        price > w.price_micros
            && match (latency_ms, w.latency_ms) {
                (Some(l), Some(wl)) => l >= wl,
                (None, None) => true,
                _ => false,
            }
    }

    fn offer(&mut self, k: RankKey<'a>, slot: u32) {
        let r = Ranked { k, slot, key: self.key, w: self.w };
        if self.heap.len() < self.limit {
            self.heap.push(r);
        } else if let Some(mut worst) = self.heap.peek_mut()
            && r < *worst
        {
            *worst = r;
        }
    }

    fn into_sorted(self) -> Vec<(RankKey<'a>, u32)> {
        self.heap.into_sorted_vec().into_iter().map(|r| (r.k, r.slot)).collect()
    }
}

/// One row seen through [`Fields`], for evaluating terms without touching the offer.
struct RowView<'a> {
    index: &'a Index,
    group: &'a Group,
    i: usize,
}

impl Fields for RowView<'_> {
    fn model(&self) -> &str {
        &self.group.key.model
    }
    fn vram_mib(&self) -> u32 {
        self.group.key.vram_mib
    }
    fn compute_capability(&self) -> Option<ComputeCapability> {
        self.group.key.cc
    }
    fn interconnect(&self) -> Interconnect {
        self.group.key.interconnect
    }
    fn gpu_free(&self) -> u32 {
        self.group.rows.gpu_free[self.i]
    }
    fn price_micros(&self) -> u64 {
        self.group.rows.price[self.i]
    }
    fn region(&self) -> &str {
        self.index.regions.get(self.group.rows.region[self.i])
    }
    fn provider(&self) -> &NodeId {
        self.index.providers.get(self.group.rows.provider[self.i])
    }
    fn cpu_cores(&self) -> u32 {
        self.group.rows.cpu_cores[self.i]
    }
    fn ram_mib(&self) -> u64 {
        self.group.rows.ram_mib[self.i]
    }
    fn disk_gib(&self) -> u64 {
        self.group.rows.disk_gib[self.i]
    }
    fn max_duration_s(&self) -> u64 {
        self.group.rows.duration_s[self.i]
    }
}

thread_local! {
    /// The matches of a score-sorted search (slot, price, latency), kept between searches
    /// on a thread: a broad query matches tens of thousands of rows, and a fresh vector
    /// each time costs a chain of reallocations and, for large ones, fresh pages from the
    /// kernel (glibc maps blocks above its mmap threshold on their own).
    static MATCHED: std::cell::RefCell<Vec<(u32, u64, Option<u32>)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Above this many matches' room, [`MATCHED`] is freed after the search rather than kept
/// (about 100k matches, 2.4 MB).
const MATCHED_KEEP: usize = 100_000;
