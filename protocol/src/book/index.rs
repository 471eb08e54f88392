//! The offer book's in-memory index: offers in a slab, compact rows grouped by GPU spec, and
//! interned providers and regions, so a search scans a few dozen bytes per offer and
//! evaluates each term only as often as its value can differ (once per GPU group, provider or
//! region; numeric terms once per offer).

use crate::envelope::Verified;
use crate::id::{NodeId, OfferId};
use crate::offer::Offer;
use crate::query::{Fields, NumericTerm, OfferNumbers, Query, Scope, Term};
use crate::rank::{Candidate, Ranges, Scored, SortKey, cmp_latency, compare, effective_weight};
use crate::spec::{ComputeCapability, Interconnect};
use crate::time::Timestamp;
use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::hash::Hash;

/// The measured RTT to a provider, in milliseconds, if any.
type LatencyFn<'a> = &'a dyn Fn(&NodeId) -> Option<u32>;

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

/// The per-offer values numeric terms compare, and where the offer lives.
#[derive(Clone, Copy, Debug)]
struct Row {
    nums: OfferNumbers,
    expires_at: Timestamp,
    provider: u32,
    region: u32,
    slot: u32,
}

#[derive(Debug)]
struct Group {
    key: SpecKey,
    rows: Vec<Row>,
}

#[derive(Debug)]
struct Slot {
    offer: Verified<Offer>,
    group: u32,
    pos: u32,
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
}

impl Index {
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(super) fn providers(&self) -> usize {
        self.by_provider.len()
    }

    pub(super) fn get(&self, id: &OfferId) -> Option<&Verified<Offer>> {
        self.by_id.get(id).and_then(|s| self.slots[*s as usize].as_ref()).map(|s| &s.offer)
    }

    pub(super) fn count_of(&self, provider: &NodeId) -> usize {
        self.by_provider.get(provider).map_or(0, BTreeSet::len)
    }

    pub(super) fn all(&self) -> impl Iterator<Item = &Verified<Offer>> {
        self.slots.iter().flatten().map(|s| &s.offer)
    }

    pub(super) fn of_provider<'a>(
        &'a self,
        provider: &NodeId,
    ) -> impl Iterator<Item = &'a Verified<Offer>> + use<'a> {
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
                let g = Group { key: key.clone(), rows: Vec::new() };
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
        };
        let rows = &mut self.groups[group as usize].as_mut().expect("group just found or made").rows;
        rows.push(row);
        let pos = (rows.len() - 1) as u32;
        self.by_provider.entry(offer.provider).or_default().insert(id);
        self.slots[slot as usize] = Some(Slot { offer, group, pos });
        self.by_id.insert(id, slot);
    }

    /// Removes an offer; returns it.
    pub(super) fn remove(&mut self, id: &OfferId) -> Option<Verified<Offer>> {
        let slot_ix = self.by_id.remove(id)?;
        let slot = self.slots[slot_ix as usize].take()?;
        self.free_slots.push(slot_ix);
        let group = self.groups[slot.group as usize].as_mut().expect("a slot's group exists");
        let row = group.rows.swap_remove(slot.pos as usize);
        if let Some(moved) = group.rows.get(slot.pos as usize)
            && let Some(s) = self.slots[moved.slot as usize].as_mut()
        {
            s.pos = slot.pos;
        }
        if group.rows.is_empty() {
            let key = group.key.clone();
            self.group_of.remove(&key);
            self.groups[slot.group as usize] = None;
            self.free_groups.push(slot.group);
        }
        self.providers.release(row.provider);
        self.regions.release(row.region);
        let provider = slot.offer.provider;
        if let Some(set) = self.by_provider.get_mut(&provider) {
            set.remove(id);
            if set.is_empty() {
                self.by_provider.remove(&provider);
            }
        }
        Some(slot.offer)
    }

    /// The offers not expired at `now` that match `query`, ranked by `key`, at most `limit`.
    /// `latency` gives the measured RTT to a provider, if any. Scores are computed for
    /// [`SortKey::Score`] only (0 otherwise).
    pub(super) fn search<'a>(
        &'a self,
        query: &Query,
        key: SortKey,
        latency_weight: f64,
        limit: usize,
        now: Timestamp,
        latency: LatencyFn<'_>,
    ) -> Vec<Scored<'a>> {
        let w = effective_weight(latency_weight);
        let mut best = TopK::new(limit, key, w);
        if limit == 0 {
            return Vec::new();
        }
        match key {
            SortKey::Score => {
                // Scores are normalised over every match: collect, then score and select.
                let mut matched: Vec<(u32, u64, Option<u32>)> = Vec::new();
                self.scan(query, now, Some(latency), &mut |row, lat| {
                    matched.push((row.slot, row.nums.price_micros, lat))
                });
                let ranges = Ranges::of(matched.iter().map(|m| (m.1, m.2)));
                for (slot, price, lat) in matched {
                    let score = ranges.score(price, lat, w);
                    if best.beats_worst(score, price, lat) {
                        best.offer(Scored {
                            candidate: Candidate { offer: self.offer_at(slot), latency_ms: lat },
                            score,
                        });
                    }
                }
            }
            SortKey::Price | SortKey::Latency => {
                // With nothing filtering on the provider, a price sort looks a latency up only
                // for rows whose price can still make the top `limit` (a lookup per provider
                // is most of a scan).
                let lazy = key == SortKey::Price
                    && !query.terms().iter().any(|t| t.field().scope() == Scope::Provider);
                self.scan(query, now, (!lazy).then_some(latency), &mut |row, lat| {
                    let price = row.nums.price_micros;
                    let lat = if lazy {
                        if !best.price_may_beat(price) {
                            return;
                        }
                        latency(self.providers.get(row.provider))
                    } else {
                        lat
                    };
                    if best.beats_worst(0.0, price, lat) {
                        best.offer(Scored {
                            candidate: Candidate { offer: self.offer_at(row.slot), latency_ms: lat },
                            score: 0.0,
                        });
                    }
                });
            }
        }
        best.into_sorted()
    }

    fn offer_at(&self, slot: u32) -> &Offer {
        self.slots[slot as usize].as_ref().expect("a row's slot is live").offer.body()
    }

    /// Calls `emit` with every row not expired at `now` that matches `query`, and the
    /// provider's latency (`None` throughout when `latency` is `None`, which callers may pass
    /// only for queries without provider-scope terms). Spec terms are evaluated once per
    /// group, provider and latency terms once per provider, region terms once per region, the
    /// rest per row.
    fn scan(
        &self,
        query: &Query,
        now: Timestamp,
        latency: Option<LatencyFn<'_>>,
        emit: &mut dyn FnMut(&Row, Option<u32>),
    ) {
        let by_scope = |scope: Scope| -> Vec<&Term> {
            query.terms().iter().filter(|t| t.field().scope() == scope).collect()
        };
        let (spec_terms, provider_terms, region_terms) =
            (by_scope(Scope::Spec), by_scope(Scope::Provider), by_scope(Scope::Region));
        let numeric: Vec<NumericTerm> = by_scope(Scope::Offer).iter().filter_map(|t| t.numeric()).collect();
        let mut provider_cache: Vec<Option<(Option<u32>, bool)>> =
            if latency.is_some() { vec![None; self.providers.capacity()] } else { Vec::new() };
        let mut region_cache: Vec<Option<bool>> = vec![None; self.regions.capacity()];
        for group in self.groups.iter().flatten() {
            let Some(first) = group.rows.first() else { continue };
            let view = |row: &'_ Row| RowView { index: self, group, row: *row };
            if !spec_terms.iter().all(|t| t.matches(&view(first), None)) {
                continue;
            }
            for row in &group.rows {
                if row.expires_at <= now {
                    continue;
                }
                let v = view(row);
                let (lat, ok) = match latency {
                    None => (None, true),
                    Some(latency) => *provider_cache[row.provider as usize].get_or_insert_with(|| {
                        let lat = latency(self.providers.get(row.provider));
                        (lat, provider_terms.iter().all(|t| t.matches(&v, lat)))
                    }),
                };
                if !ok {
                    continue;
                }
                let region_ok = *region_cache[row.region as usize]
                    .get_or_insert_with(|| region_terms.iter().all(|t| t.matches(&v, lat)));
                if region_ok && numeric.iter().all(|t| t.test(&row.nums)) {
                    emit(row, lat);
                }
            }
        }
    }
}

/// The best `limit` candidates seen so far, under the order of [`crate::rank::compare`].
struct TopK<'a> {
    limit: usize,
    key: SortKey,
    w: f64,
    heap: BinaryHeap<Ranked<'a>>,
}

/// A candidate ordered by the ranking order, worst greatest (so the heap's top is the worst).
struct Ranked<'a> {
    s: Scored<'a>,
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
        compare(self.key, self.w, &self.s, &other.s)
    }
}

impl<'a> TopK<'a> {
    fn new(limit: usize, key: SortKey, w: f64) -> TopK<'a> {
        TopK { limit, key, w, heap: BinaryHeap::with_capacity(limit.min(4096) + 1) }
    }

    /// Whether a candidate with this score, price and latency may rank before the worst kept
    /// one (always, until `limit` are kept). Decides from the row alone for most rows, so the
    /// offer is only read for real contenders; exact ties on these keys say yes and are
    /// settled by [`TopK::offer`].
    fn beats_worst(&self, score: f64, price: u64, latency_ms: Option<u32>) -> bool {
        let Some(worst) = self.heap.peek().filter(|_| self.heap.len() >= self.limit) else { return true };
        let (wc, w) = (&worst.s.candidate, &worst.s);
        let by_price = price.cmp(&wc.offer.price.0);
        let by_latency = cmp_latency(latency_ms, wc.latency_ms);
        let ord = match self.key {
            SortKey::Price => by_price.then(by_latency),
            SortKey::Latency => by_latency.then(by_price),
            SortKey::Score => {
                let measured_first = if self.w > 0.0 {
                    wc.latency_ms.is_some().cmp(&latency_ms.is_some())
                } else {
                    Ordering::Equal
                };
                score.total_cmp(&w.score).then(measured_first).then(by_price).then(by_latency)
            }
        };
        ord != Ordering::Greater
    }

    /// Whether a candidate at `price` may still rank before the worst kept one under
    /// [`SortKey::Price`] (ties on price are settled by latency, so they may).
    fn price_may_beat(&self, price: u64) -> bool {
        self.heap.len() < self.limit || self.heap.peek().is_none_or(|w| price <= w.s.candidate.offer.price.0)
    }

    fn offer(&mut self, s: Scored<'a>) {
        let r = Ranked { s, key: self.key, w: self.w };
        if self.heap.len() < self.limit {
            self.heap.push(r);
        } else if let Some(mut worst) = self.heap.peek_mut()
            && r < *worst
        {
            *worst = r;
        }
    }

    fn into_sorted(self) -> Vec<Scored<'a>> {
        self.heap.into_sorted_vec().into_iter().map(|r| r.s).collect()
    }
}

/// One row seen through [`Fields`], for evaluating terms without touching the offer.
struct RowView<'a> {
    index: &'a Index,
    group: &'a Group,
    row: Row,
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
        self.row.nums.gpu_free
    }
    fn price_micros(&self) -> u64 {
        self.row.nums.price_micros
    }
    fn region(&self) -> &str {
        self.index.regions.get(self.row.region)
    }
    fn provider(&self) -> &NodeId {
        self.index.providers.get(self.row.provider)
    }
    fn cpu_cores(&self) -> u32 {
        self.row.nums.cpu_cores
    }
    fn ram_mib(&self) -> u64 {
        self.row.nums.ram_mib
    }
    fn disk_gib(&self) -> u64 {
        self.row.nums.disk_gib
    }
    fn max_duration_s(&self) -> u64 {
        self.row.nums.max_duration_s
    }
}
