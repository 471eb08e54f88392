//! Ranking search results: by price, by measured latency, or by a blended score.
//!
//! # Orders
//!
//! Every order is total and deterministic: it depends only on the candidates, never on the
//! order they arrive in. Each [`SortKey`] compares by its own criterion first, then breaks
//! ties the same way: **price** ascending, then **latency** ascending with unknown latency
//! last, then **offer id** bytes, then provider, then newest `seq` first.
//!
//! - [`SortKey::Price`]: cheapest first.
//! - [`SortKey::Latency`]: lowest measured latency first; offers with no measurement last.
//! - [`SortKey::Score`]: lowest [score](scores) first. When the latency weight is above 0, a
//!   candidate with a measured latency goes before one without at an equal score (an unknown
//!   latency scores the same as the slowest measured one), and then the common ties apply.
//!   So weight 0 gives exactly the price order and weight 1 exactly the latency order.
//!
//! # Score
//!
//! `score = (1 − w) · norm_price + w · norm_latency`, lower is better, in `[0, 1]`, where
//!
//! - `norm_price = (price − min) / (max − min)` over the prices of the candidate set, and 0
//!   for every candidate when all prices are equal;
//! - `norm_latency` is the same over the *measured* latencies of the set; a candidate with no
//!   measurement counts as 1.0 (the worst);
//! - `w` is the latency weight, clamped to `[0, 1]` ([`DEFAULT_LATENCY_WEIGHT`] when NaN).
//!
//! Scores are relative to the set: the same offer can score differently among other offers.
//! Floats are used only here, for ordering and display; no price is ever rounded through them.

use crate::id::{NodeId, OfferId};
use crate::offer::Offer;
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// The latency weight when the user gives none: price and latency count the same.
pub const DEFAULT_LATENCY_WEIGHT: f64 = 0.5;

/// What to sort search results by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SortKey {
    /// Cheapest first.
    #[default]
    Price,
    /// Lowest measured latency first, unmeasured last.
    Latency,
    /// Lowest blended score first (see the module docs).
    Score,
}

impl SortKey {
    /// Every key, in the order help texts list them.
    pub const ALL: [SortKey; 3] = [SortKey::Price, SortKey::Latency, SortKey::Score];

    /// The name on the command line and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            SortKey::Price => "price",
            SortKey::Latency => "latency",
            SortKey::Score => "score",
        }
    }
}

impl fmt::Display for SortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A sort key name that is not one of [`SortKey::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a sort key; use one of price, latency, score")]
pub struct SortKeyError(pub String);

impl FromStr for SortKey {
    type Err = SortKeyError;
    /// Parses `price`, `latency` or `score`, ignoring ASCII case.
    fn from_str(s: &str) -> Result<SortKey, SortKeyError> {
        SortKey::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| SortKeyError(s.to_string()))
    }
}

/// An offer to rank, with its measured round trip (`None`: not measured).
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    pub offer: &'a Offer,
    pub latency_ms: Option<u32>,
}

/// A ranked candidate with its score (see [`scores`]), computed whatever the sort key.
#[derive(Clone, Copy, Debug)]
pub struct Scored<'a> {
    pub candidate: Candidate<'a>,
    pub score: f64,
}

/// The weight actually used: `w` clamped to `[0, 1]`, the default when NaN.
pub fn effective_weight(latency_weight: f64) -> f64 {
    if latency_weight.is_nan() { DEFAULT_LATENCY_WEIGHT } else { latency_weight.clamp(0.0, 1.0) }
}

/// The score of each candidate, in input order (see the module docs). The scores depend on
/// the set, not on its order.
pub fn scores(cands: &[Candidate<'_>], latency_weight: f64) -> Vec<f64> {
    let w = effective_weight(latency_weight);
    let range = Ranges::of(cands.iter().map(|c| (c.offer.price.0, c.latency_ms)));
    cands.iter().map(|c| range.score(c.offer.price.0, c.latency_ms, w)).collect()
}

/// The price and latency ranges of a candidate set, which a score is normalised against.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ranges {
    prices: Option<(u64, u64)>,
    latencies: Option<(u64, u64)>,
}

impl Ranges {
    /// The ranges of `(price in micro-USD, latency)` pairs.
    pub fn of(items: impl Iterator<Item = (u64, Option<u32>)>) -> Ranges {
        let mut r = Ranges::default();
        for (p, l) in items {
            r.add(p, l);
        }
        r
    }

    /// Widens the ranges to include one more candidate.
    pub fn add(&mut self, price: u64, latency_ms: Option<u32>) {
        let widen = |acc: Option<(u64, u64)>, v: u64| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        };
        self.prices = widen(self.prices, price);
        if let Some(l) = latency_ms {
            self.latencies = widen(self.latencies, u64::from(l));
        }
    }

    /// The score of one candidate: `(1 − w)·norm(price) + w·norm(latency)`, unknown latency
    /// counting as 1. `w` must already be [`effective_weight`].
    pub fn score(&self, price: u64, latency_ms: Option<u32>, w: f64) -> f64 {
        let np = self.prices.map_or(0.0, |r| norm(price, r));
        let nl = match (latency_ms, self.latencies) {
            (Some(l), Some(r)) => norm(u64::from(l), r),
            _ => 1.0,
        };
        // The clamp only absorbs rounding (each term is within [0, 1]).
        ((1.0 - w) * np + w * nl).clamp(0.0, 1.0)
    }
}

/// Sorts `cands` in place by `key` (see the module docs). `latency_weight` only matters for
/// [`SortKey::Score`]. A `&mut Vec<Candidate>` can be passed as it is.
pub fn rank(cands: &mut [Candidate<'_>], key: SortKey, latency_weight: f64) {
    let sorted = ranked(cands, key, latency_weight);
    for (slot, s) in cands.iter_mut().zip(sorted) {
        *slot = s.candidate;
    }
}

/// Sorts candidates by `key` (see the module docs for the order and the tie-breaks) and
/// returns them with their scores. Allocates a new vector; the input is not changed.
pub fn ranked<'a>(cands: &[Candidate<'a>], key: SortKey, latency_weight: f64) -> Vec<Scored<'a>> {
    top(cands, key, latency_weight, cands.len())
}

/// The first `limit` candidates of [`ranked`], in the same order, without sorting the rest:
/// scores are computed over every candidate, then the best `limit` are selected and sorted.
pub fn top<'a>(cands: &[Candidate<'a>], key: SortKey, latency_weight: f64, limit: usize) -> Vec<Scored<'a>> {
    let w = effective_weight(latency_weight);
    let mut out: Vec<Scored<'a>> =
        cands.iter().zip(scores(cands, w)).map(|(&candidate, score)| Scored { candidate, score }).collect();
    let order = |a: &Scored<'_>, b: &Scored<'_>| compare(key, w, a, b);
    if limit < out.len() {
        if limit == 0 {
            return Vec::new();
        }
        out.select_nth_unstable_by(limit - 1, order);
        out.truncate(limit);
    }
    out.sort_by(order);
    out
}

/// The total order of [`ranked`] (`w` already [`effective_weight`]; scores only matter for
/// [`SortKey::Score`]).
pub fn compare(key: SortKey, w: f64, a: &Scored<'_>, b: &Scored<'_>) -> Ordering {
    compare_keys(key, w, &RankKey::of(a), &RankKey::of(b))
}

/// What the ranking order reads of a scored candidate: enough to order offers without
/// holding them decoded (the book's index ranks its rows with it).
#[derive(Clone, Copy, Debug)]
pub struct RankKey<'a> {
    pub score: f64,
    pub price_micros: u64,
    pub latency_ms: Option<u32>,
    pub offer_id: &'a OfferId,
    pub provider: &'a NodeId,
    pub seq: u64,
}

impl<'a> RankKey<'a> {
    /// The key of a scored candidate.
    pub fn of(s: &Scored<'a>) -> RankKey<'a> {
        let o = s.candidate.offer;
        RankKey {
            score: s.score,
            price_micros: o.price.0,
            latency_ms: s.candidate.latency_ms,
            offer_id: &o.offer_id,
            provider: &o.provider,
            seq: o.seq,
        }
    }
}

/// [`compare`] on keys.
pub fn compare_keys(key: SortKey, w: f64, a: &RankKey<'_>, b: &RankKey<'_>) -> Ordering {
    match key {
        SortKey::Price => tie_break(a, b),
        SortKey::Latency => cmp_latency(a.latency_ms, b.latency_ms).then_with(|| tie_break(a, b)),
        SortKey::Score => {
            let by_score = a.score.total_cmp(&b.score);
            let measured_first =
                if w > 0.0 { b.latency_ms.is_some().cmp(&a.latency_ms.is_some()) } else { Ordering::Equal };
            by_score.then(measured_first).then_with(|| tie_break(a, b))
        }
    }
}

fn tie_break(a: &RankKey<'_>, b: &RankKey<'_>) -> Ordering {
    a.price_micros
        .cmp(&b.price_micros)
        .then_with(|| cmp_latency(a.latency_ms, b.latency_ms))
        .then_with(|| a.offer_id.as_bytes().cmp(b.offer_id.as_bytes()))
        .then_with(|| a.provider.cmp(b.provider))
        .then_with(|| b.seq.cmp(&a.seq))
}

/// Lower latency first; unknown after every known latency.
/// Known latencies first, lowest first.
pub fn cmp_latency(a: Option<u32>, b: Option<u32>) -> Ordering {
    match (a, b) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// `(x − min) / (max − min)`, 0 when `max == min`.
fn norm(x: u64, (min, max): (u64, u64)) -> f64 {
    if max == min { 0.0 } else { x.saturating_sub(min) as f64 / (max - min) as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{NodeId, OfferId};
    use crate::offer::PROTOCOL_VERSION;
    use crate::price::Price;
    use crate::spec::{GpuSpec, HostSpec, Interconnect};
    use crate::time::Timestamp;
    use proptest::prelude::*;

    /// An offer from provider `n` at `micros` per GPU-hour.
    fn offer(n: u8, micros: u64) -> Offer {
        let provider = NodeId::from_bytes([n; 32]);
        let gpu = GpuSpec {
            vendor: "nvidia".into(),
            model: "H100".into(),
            vram_mib: 81559,
            compute_capability: None,
            interconnect: Interconnect::Sxm,
            cuda_version: None,
            driver_version: None,
        };
        Offer {
            v: PROTOCOL_VERSION,
            network: "testnet".into(),
            offer_id: OfferId::derive(&provider, &gpu.group_key()),
            provider,
            seq: 1,
            issued_at: Timestamp(0),
            expires_at: Timestamp(60_000),
            gpu,
            gpu_total: 1,
            gpu_free: 1,
            host: HostSpec { cpu_cores: 8, ram_mib: 65536, disk_gib: 100, region: "eu".into() },
            price: Price(micros),
            min_duration_s: 60,
            max_duration_s: 3600,
            addrs: vec![],
        }
    }

    fn offers(specs: &[(u64, Option<u32>)]) -> Vec<(Offer, Option<u32>)> {
        specs.iter().enumerate().map(|(i, &(p, l))| (offer(i as u8, p), l)).collect()
    }

    fn cands(offers: &[(Offer, Option<u32>)]) -> Vec<Candidate<'_>> {
        offers.iter().map(|(offer, latency_ms)| Candidate { offer, latency_ms: *latency_ms }).collect()
    }

    /// The rank of each input position after sorting (by provider byte, which is the index).
    fn order(offers: &[(Offer, Option<u32>)], key: SortKey, w: f64) -> Vec<u8> {
        let mut c = cands(offers);
        rank(&mut c, key, w);
        c.iter().map(|c| c.offer.provider.as_bytes()[0]).collect()
    }

    #[test]
    fn sort_key_parses_and_prints() {
        for k in SortKey::ALL {
            assert_eq!(k.to_string().parse::<SortKey>(), Ok(k));
        }
        assert_eq!("SCORE".parse::<SortKey>(), Ok(SortKey::Score));
        let e = "cost".parse::<SortKey>().unwrap_err();
        assert_eq!(e.to_string(), "`cost` is not a sort key; use one of price, latency, score");
        assert_eq!(SortKey::default(), SortKey::Price);
    }

    #[test]
    fn price_orders_cheapest_first_then_latency() {
        let o = offers(&[(3, Some(5)), (1, None), (2, Some(9)), (1, Some(50)), (1, Some(7))]);
        assert_eq!(order(&o, SortKey::Price, 0.5), vec![4, 3, 1, 2, 0]);
    }

    #[test]
    fn latency_orders_lowest_first_unknown_last_ties_by_price() {
        let o = offers(&[(3, Some(5)), (1, None), (2, Some(9)), (9, None), (1, Some(5))]);
        assert_eq!(order(&o, SortKey::Latency, 0.5), vec![4, 0, 2, 1, 3]);
    }

    #[test]
    fn score_blends_min_max_norms() {
        // Prices 1, 2, 3 → 0, 0.5, 1; latencies 100, 10, unknown → 1, 0, 1.
        let o = offers(&[(1_000_000, Some(100)), (2_000_000, Some(10)), (3_000_000, None)]);
        let c = cands(&o);
        assert_eq!(scores(&c, 0.5), vec![0.5, 0.25, 1.0]);
        assert_eq!(scores(&c, 0.0), vec![0.0, 0.5, 1.0]);
        assert_eq!(scores(&c, 1.0), vec![1.0, 0.0, 1.0]);
        assert_eq!(order(&o, SortKey::Score, 0.5), vec![1, 0, 2]);
        let r = ranked(&c, SortKey::Score, DEFAULT_LATENCY_WEIGHT);
        let shown: Vec<f64> = r.iter().map(|s| s.score).collect();
        assert_eq!(shown, vec![0.25, 0.5, 1.0]);
    }

    #[test]
    fn equal_values_normalise_to_zero_and_no_latency_to_one() {
        let o = offers(&[(5, None), (5, None)]);
        assert_eq!(scores(&cands(&o), 0.5), vec![0.5, 0.5]);
        let o = offers(&[(5, Some(3)), (5, Some(3))]);
        assert_eq!(scores(&cands(&o), 0.5), vec![0.0, 0.0]);
        assert!(scores(&[], 0.5).is_empty());
        let mut none: Vec<Candidate<'_>> = Vec::new();
        rank(&mut none, SortKey::Score, 0.5);
    }

    #[test]
    fn weight_is_clamped() {
        let o = offers(&[(1, Some(100)), (2, Some(10)), (3, None), (2, Some(50))]);
        let c = cands(&o);
        assert_eq!(scores(&c, -3.0), scores(&c, 0.0));
        assert_eq!(scores(&c, 7.0), scores(&c, 1.0));
        assert_eq!(scores(&c, f64::NAN), scores(&c, DEFAULT_LATENCY_WEIGHT));
        assert_eq!(order(&o, SortKey::Score, f64::INFINITY), order(&o, SortKey::Latency, 0.0));
    }

    #[test]
    fn ties_are_broken_the_same_whatever_the_input_order() {
        let specs = [
            (2, Some(5)),
            (2, Some(5)),
            (1, None),
            (1, None),
            (2, None),
            (1, Some(5)),
            (3, Some(1)),
            (2, Some(5)),
        ];
        let o = offers(&specs);
        for key in SortKey::ALL {
            let mut base = cands(&o);
            rank(&mut base, key, 0.5);
            let expected: Vec<OfferId> = base.iter().map(|c| c.offer.offer_id).collect();
            for perm in [[7, 6, 5, 4, 3, 2, 1, 0], [3, 0, 6, 1, 7, 2, 5, 4], [1, 0, 3, 2, 5, 4, 7, 6]] {
                let all = cands(&o);
                let mut shuffled: Vec<Candidate<'_>> = perm.iter().map(|&i| all[i]).collect();
                rank(&mut shuffled, key, 0.5);
                let got: Vec<OfferId> = shuffled.iter().map(|c| c.offer.offer_id).collect();
                assert_eq!(got, expected, "{key} with permutation {perm:?}");
            }
            // Equal price and latency: decided by offer id bytes.
            let tied: Vec<&OfferId> = base
                .iter()
                .filter(|c| c.offer.price.0 == 2 && c.latency_ms == Some(5))
                .map(|c| &c.offer.offer_id)
                .collect();
            assert!(tied.windows(2).all(|w| w[0].as_bytes() < w[1].as_bytes()), "{key}: {tied:?}");
        }
    }

    #[test]
    fn weight_one_puts_measured_before_unmeasured_at_equal_score() {
        // The slowest measured (norm 1.0) and an unmeasured (1.0) tie on score; the cheaper
        // unmeasured one still goes last, as in the latency order.
        let o = offers(&[(5, Some(10)), (9, Some(20)), (1, None)]);
        assert_eq!(order(&o, SortKey::Score, 1.0), vec![0, 1, 2]);
        assert_eq!(order(&o, SortKey::Latency, 1.0), vec![0, 1, 2]);
    }

    fn specs_strategy() -> impl Strategy<Value = Vec<(u64, Option<u32>)>> {
        proptest::collection::vec((0u64..6, proptest::option::of(0u32..6)), 0..12)
    }

    proptest! {
        #[test]
        fn weight_zero_is_price_order_and_weight_one_is_latency_order(specs in specs_strategy()) {
            let o = offers(&specs);
            prop_assert_eq!(order(&o, SortKey::Score, 0.0), order(&o, SortKey::Price, 0.0));
            prop_assert_eq!(order(&o, SortKey::Score, 1.0), order(&o, SortKey::Latency, 0.0));
        }

        #[test]
        fn order_and_scores_do_not_depend_on_input_order(
            (specs, perm) in specs_strategy().prop_flat_map(|s| {
                let n = s.len();
                (Just(s), Just((0..n).collect::<Vec<usize>>()).prop_shuffle())
            }),
            w in 0.0f64..=1.0,
        ) {
            let o = offers(&specs);
            let all = cands(&o);
            let shuffled: Vec<Candidate<'_>> = perm.iter().map(|&i| all[i]).collect();
            let view = |r: Vec<Scored<'_>>| -> Vec<(OfferId, u64)> {
                r.iter().map(|s| (s.candidate.offer.offer_id, s.score.to_bits())).collect()
            };
            for key in SortKey::ALL {
                prop_assert_eq!(view(ranked(&all, key, w)), view(ranked(&shuffled, key, w)));
            }
        }

        #[test]
        fn scores_are_within_unit_interval_and_rank_sorts_by_them(
            specs in specs_strategy(),
            w in -1.0f64..2.0,
        ) {
            let o = offers(&specs);
            let r = ranked(&cands(&o), SortKey::Score, w);
            prop_assert!(r.iter().all(|s| (0.0..=1.0).contains(&s.score)));
            prop_assert!(r.windows(2).all(|p| p[0].score <= p[1].score));
        }
    }
}
