//! The provider's lease state machine (`ProviderEngine`) driven by a fuzzer-chosen script:
//! signed requests and releases with fuzzer-chosen fields (and faults: wrong network,
//! provider, version, signer, tampered bytes, replayed nonces), raw garbage as request and
//! release bodies, status queries, start-hook results, timers, persist failures, GPU group
//! changes, policy changes and crash-restarts from the persisted records.
//!
//! After every step: no GPU uuid is held by two live leases (in the engine and in the last
//! persisted records), the allocation map agrees with the live leases, a persisted terminal
//! lease never comes back to life, every reply is an envelope of the right kind signed by
//! the provider, a grant names GPUs its lease holds, and no lease ends twice. At the end,
//! finishing every hook and running time past every lease ends them all and frees every GPU.
#![no_main]

use arbitrary::Arbitrary;
use gpumesh_protocol::envelope;
use gpumesh_protocol::lease::messages::*;
use gpumesh_protocol::lease::provider::*;
use gpumesh_protocol::lease::{GpuUnit, LeaseState, ProviderLease};
use gpumesh_protocol::wire::LeaseRpcReply;
use gpumesh_protocol::*;
use gpumesh_protocol_fuzz::{NET, NOW, id_of, key};
use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeMap, HashMap, HashSet};

const RENTERS: u8 = 6;

#[derive(Arbitrary, Debug)]
struct Script {
    start_hook: bool,
    max_leases_per_renter: u8,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Request(Req),
    RawRequest(Vec<u8>),
    Replay(u8),
    Release(Rel),
    RawRelease(Vec<u8>),
    Status {
        lease: u8,
        from: u8,
    },
    HookDone {
        lease: u8,
        result: HookResult,
    },
    Timer {
        lease: u8,
    },
    /// Advance the clock by this many tenths of a second (up to ~109 minutes) and fire the
    /// timers that fall due.
    Advance(u16),
    PersistFailed {
        lease: u8,
        token: Option<u64>,
    },
    Groups(GroupChange),
    Policy {
        max_per: u8,
        deny: Option<u8>,
        allow: Option<u8>,
    },
    Crash,
}

/// A fault is applied only when the high bit is set, so half of the requests are clean.
/// Bits: 1 version, 2 network, 4 provider, 8 signer, 16 tampered bytes, 32 any GPU count,
/// 64 any duration.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Faults(u8);

impl Faults {
    fn has(self, bit: u8) -> bool {
        self.0 & 0x80 != 0 && self.0 & bit != 0
    }
}

#[derive(Arbitrary, Debug)]
enum PriceChoice {
    Offer,
    Delta(i32),
    Raw(u64),
}

#[derive(Arbitrary, Debug)]
enum Issued {
    Now,
    /// Milliseconds from now, within ±32.7 s (around the skew and age limits).
    Near(i16),
    Far(i32),
}

#[derive(Arbitrary, Debug)]
enum NonceChoice {
    Fresh,
    Reuse(u8),
    Raw([u8; 16]),
}

#[derive(Arbitrary, Debug)]
struct Req {
    renter: u8,
    group: u8,
    gpus: u16,
    duration_s: u32,
    price: PriceChoice,
    max_price: PriceChoice,
    nonce: NonceChoice,
    issued: Issued,
    ssh_key: Option<String>,
    faults: Faults,
    version: u32,
    signer: u8,
    tamper: (u16, u8),
}

#[derive(Arbitrary, Debug)]
struct Rel {
    lease: u8,
    renter: Option<u8>,
    faults: Faults,
    signer: u8,
    issued_offset_ms: i32,
    tamper: (u16, u8),
}

#[derive(Arbitrary, Debug)]
enum HookResult {
    Ok(String),
    Empty,
    TooLong,
    Err(String),
}

#[derive(Arbitrary, Debug)]
enum GroupChange {
    Reprice { group: u8, price: u32 },
    Durations { group: u8, min_s: u16, max_s: u16 },
    Drop(u8),
    MoveGpu { from: u8, to: u8 },
    Reset,
}

fn price_of(choice: &PriceChoice, offer: Price) -> Price {
    match choice {
        PriceChoice::Offer => offer,
        PriceChoice::Delta(d) => Price(offer.0.saturating_add_signed(*d as i64)),
        PriceChoice::Raw(p) => Price(*p),
    }
}

fn shifted(now: Timestamp, ms: i32) -> Timestamp {
    Timestamp(now.0.saturating_add_signed(ms as i64))
}

fn tamper(mut bytes: Vec<u8>, (at, xor): (u16, u8)) -> Vec<u8> {
    if !bytes.is_empty() {
        let i = at as usize % bytes.len();
        bytes[i] ^= xor;
    }
    bytes
}

fn default_groups(provider: &NodeId) -> Vec<GpuGroup> {
    let spec = |model: &str| format!("{}|81920|sxm", model.to_ascii_lowercase());
    vec![
        GpuGroup {
            offer_id: OfferId::derive(provider, &spec("A100")),
            gpus: (0..4).map(|i| GpuUnit { uuid: format!("GPU-{i}"), index: i }).collect(),
            price: Price(1_000_000),
            min_duration_s: 1,
            max_duration_s: 600,
        },
        GpuGroup {
            offer_id: OfferId::derive(provider, &spec("H100")),
            gpus: (4..6).map(|i| GpuUnit { uuid: format!("GPU-{i}"), index: i }).collect(),
            price: Price(2_500_000),
            min_duration_s: 60,
            max_duration_s: 3600,
        },
    ]
}

struct Harness {
    pk: SigningKey,
    me: NodeId,
    config: ProviderConfig,
    engine: ProviderEngine,
    groups: Vec<GpuGroup>,
    /// Every offer id ever on offer (requests may name one that left).
    offer_ids: Vec<OfferId>,
    now: Timestamp,
    /// The last persisted record of each lease.
    disk: BTreeMap<LeaseId, ProviderLease>,
    timers: Vec<(Timestamp, LeaseId)>,
    hooks: Vec<LeaseId>,
    known: Vec<LeaseId>,
    known_set: HashSet<LeaseId>,
    sent: Vec<Vec<u8>>,
    nonces: Vec<[u8; 16]>,
    counter: u64,
    ended: HashMap<LeaseId, usize>,
}

impl Harness {
    fn new(start_hook: bool, max_per: usize) -> Harness {
        let pk = key(200);
        let me = id_of(&pk);
        let config = ProviderConfig {
            network: NET.into(),
            max_clock_skew_ms: 30_000,
            request_max_age_ms: 60_000,
            policy: Policy { max_leases_per_renter: max_per, ..Policy::default() },
            start_hook,
        };
        let groups = default_groups(&me);
        let mut h = Harness {
            engine: ProviderEngine::new(pk.clone(), config.clone()),
            pk,
            me,
            config,
            offer_ids: groups.iter().map(|g| g.offer_id).collect(),
            groups,
            now: NOW,
            disk: BTreeMap::new(),
            timers: Vec::new(),
            hooks: Vec::new(),
            known: Vec::new(),
            known_set: HashSet::new(),
            sent: Vec::new(),
            nonces: Vec::new(),
            counter: 0,
            ended: HashMap::new(),
        };
        h.feed(ProviderInput::SetGroups(h.groups.clone()));
        h
    }

    fn learn(&mut self, id: LeaseId) {
        if self.known_set.insert(id) {
            self.known.push(id);
        }
    }

    fn pick_lease(&self, i: u8) -> LeaseId {
        if self.known.is_empty() {
            LeaseId::derive(&self.me, &self.me, &[i; 16])
        } else {
            self.known[i as usize % self.known.len()]
        }
    }

    fn feed(&mut self, input: ProviderInput<'_>) {
        let out = self.engine.handle(input, self.now);
        let mut granted = Vec::new();
        for o in &out {
            match o {
                ProviderOutput::Persist(l) => {
                    if let Some(old) = self.disk.get(&l.lease_id) {
                        assert!(
                            !(old.state.is_terminal() && l.state.is_live()),
                            "terminal lease came back to life: {:?} -> {:?}",
                            old.state,
                            l.state
                        );
                    }
                    self.disk.insert(l.lease_id, l.clone());
                    self.learn(l.lease_id);
                }
                ProviderOutput::Reply { reply, .. } => {
                    if let Some(id) = self.check_reply(reply) {
                        granted.push(id);
                    }
                }
                ProviderOutput::RunStartHook(l) => self.hooks.push(l.lease_id),
                ProviderOutput::ScheduleEnd { lease_id, at } => self.timers.push((*at, *lease_id)),
                ProviderOutput::Event(ProviderEvent::Ended { lease_id, .. }) => {
                    let n = self.ended.entry(*lease_id).or_default();
                    *n += 1;
                    assert_eq!(*n, 1, "lease {lease_id} ended twice");
                }
                _ => {}
            }
        }
        // A grant sent in this step is for a lease that is active and holds the GPUs it names.
        for (id, uuids) in granted {
            if let Some(l) = self.engine.lease(&id) {
                if l.state == LeaseState::Active {
                    let held: Vec<&str> = l.gpus.iter().map(|g| g.uuid.as_str()).collect();
                    assert_eq!(held, uuids.iter().map(String::as_str).collect::<Vec<_>>());
                }
            } else {
                panic!("grant for lease {id} the engine does not know");
            }
        }
        self.check_exclusive();
    }

    /// Every reply carries an envelope of the right kind, signed by this provider.
    fn check_reply(&mut self, reply: &LeaseRpcReply) -> Option<(LeaseId, Vec<String>)> {
        match reply {
            LeaseRpcReply::Grant(b) | LeaseRpcReply::Active(b) => {
                let g = envelope::open::<LeaseGrant>(&b.0).expect("a grant the provider sent opens");
                assert_eq!(g.signer(), &self.me);
                assert_eq!(g.gpu_uuids.len(), g.gpu_indices.len());
                assert!(g.start <= g.end);
                self.learn(g.lease_id);
                Some((g.lease_id, g.gpu_uuids.clone()))
            }
            LeaseRpcReply::Reject(b) => {
                let r = envelope::open::<LeaseReject>(&b.0).expect("a reject the provider sent opens");
                assert_eq!(r.signer(), &self.me);
                assert!(r.detail.len() <= MAX_DETAIL_LEN);
                None
            }
            LeaseRpcReply::Receipt(b) => {
                let r = envelope::open::<UsageReceipt>(&b.0).expect("a receipt the provider sent opens");
                assert_eq!(r.signer(), &self.me);
                assert!(r.start <= r.end);
                None
            }
            LeaseRpcReply::Unknown => None,
        }
    }

    /// No GPU in two live leases, in the engine and in the persisted records; the engine's
    /// allocation map is exactly the GPUs of its live leases.
    fn check_exclusive(&self) {
        let mut held: HashMap<&str, LeaseId> = HashMap::new();
        for l in self.engine.leases().filter(|l| l.state.is_live()) {
            for g in &l.gpus {
                if let Some(other) = held.insert(&g.uuid, l.lease_id) {
                    panic!("GPU {} in live leases {other} and {}", g.uuid, l.lease_id);
                }
                assert_eq!(self.engine.allocations().get(&g.uuid), Some(&l.lease_id));
            }
        }
        assert_eq!(held.len(), self.engine.allocations().len(), "allocation map holds GPUs of no live lease");
        let mut on_disk: HashSet<&str> = HashSet::new();
        for l in self.disk.values().filter(|l| l.state.is_live()) {
            for g in &l.gpus {
                assert!(on_disk.insert(&g.uuid), "GPU {} in two live persisted leases", g.uuid);
            }
        }
    }

    fn request(&mut self, r: &Req) {
        let rk = key(r.renter % RENTERS + 1);
        let offer_id = self.offer_ids[r.group as usize % self.offer_ids.len()];
        let offer_price = self.groups.iter().find(|g| g.offer_id == offer_id).map_or(Price(1), |g| g.price);
        let nonce = match &r.nonce {
            NonceChoice::Reuse(i) if !self.nonces.is_empty() => self.nonces[*i as usize % self.nonces.len()],
            NonceChoice::Raw(n) => *n,
            _ => {
                self.counter += 1;
                let mut n = [0u8; 16];
                n[..8].copy_from_slice(&self.counter.to_le_bytes());
                n
            }
        };
        self.nonces.push(nonce);
        let f = r.faults;
        let body = LeaseRequest {
            v: if f.has(1) { r.version } else { PROTOCOL_VERSION },
            network: if f.has(2) { "mainnet".into() } else { NET.into() },
            renter: id_of(&rk),
            provider: if f.has(4) { id_of(&key(r.signer)) } else { self.me },
            offer_id,
            // Mostly within the groups' sizes and duration ranges, so that leases happen.
            gpus: if f.has(32) { r.gpus as u32 } else { r.gpus as u32 % 6 },
            duration_s: if f.has(64) { r.duration_s as u64 } else { r.duration_s as u64 % 700 },
            price: price_of(&r.price, offer_price),
            max_price: price_of(&r.max_price, offer_price),
            nonce: Nonce(nonce),
            issued_at: match r.issued {
                Issued::Now => self.now,
                Issued::Near(ms) => shifted(self.now, ms as i32),
                Issued::Far(ms) => shifted(self.now, ms),
            },
            ssh_key: r.ssh_key.clone(),
        };
        // Signed by someone other than the renter the body names.
        let signer = if f.has(8) { key(r.signer) } else { rk.clone() };
        let mut bytes = envelope::seal(&signer, &body);
        if f.has(16) {
            bytes = tamper(bytes, r.tamper);
        }
        self.learn(LeaseId::derive(&self.me, &body.renter, &nonce));
        self.counter += 1;
        let token = self.counter;
        self.feed(ProviderInput::Request { token, from: id_of(&rk), bytes: &bytes });
        self.sent.push(bytes);
    }

    fn release(&mut self, r: &Rel) {
        let lease_id = self.pick_lease(r.lease);
        // By default the lease's own renter releases it.
        let owner = self.engine.lease(&lease_id).map(|l| l.renter);
        let rk = match r.renter {
            Some(n) => key(n % RENTERS + 1),
            None => (1..=RENTERS).map(key).find(|k| Some(id_of(k)) == owner).unwrap_or(key(1)),
        };
        let f = r.faults;
        let body = LeaseRelease {
            v: PROTOCOL_VERSION,
            network: if f.has(2) { "mainnet".into() } else { NET.into() },
            lease_id,
            renter: id_of(&rk),
            provider: if f.has(4) { id_of(&key(r.signer)) } else { self.me },
            issued_at: shifted(self.now, r.issued_offset_ms),
        };
        let signer = if f.has(8) { key(r.signer) } else { rk.clone() };
        let mut bytes = envelope::seal(&signer, &body);
        if f.has(16) {
            bytes = tamper(bytes, r.tamper);
        }
        self.feed(ProviderInput::Release { token: 0, from: id_of(&rk), bytes: &bytes });
    }

    fn change_groups(&mut self, c: &GroupChange) {
        let n = self.groups.len();
        match c {
            GroupChange::Reprice { group, price } if n > 0 => {
                self.groups[*group as usize % n].price = Price(*price as u64 + 1)
            }
            GroupChange::Durations { group, min_s, max_s } if n > 0 => {
                let g = &mut self.groups[*group as usize % n];
                g.min_duration_s = *min_s as u64;
                g.max_duration_s = *max_s as u64;
            }
            GroupChange::Drop(i) if n > 0 => {
                self.groups.remove(*i as usize % n);
            }
            GroupChange::MoveGpu { from, to } if n > 1 => {
                let (a, b) = (*from as usize % n, *to as usize % n);
                if a != b && !self.groups[a].gpus.is_empty() {
                    let unit = self.groups[a].gpus.pop().expect("checked non-empty");
                    self.groups[b].gpus.push(unit);
                }
            }
            GroupChange::Reset => self.groups = default_groups(&self.me),
            _ => {}
        }
        for g in &self.groups {
            if !self.offer_ids.contains(&g.offer_id) {
                self.offer_ids.push(g.offer_id);
            }
        }
        self.feed(ProviderInput::SetGroups(self.groups.clone()));
    }

    fn advance(&mut self, ms: u64) {
        self.now = self.now.plus_millis(ms);
        let now = self.now;
        let mut due: Vec<_> = self.timers.iter().filter(|(at, _)| *at <= now).copied().collect();
        due.sort();
        self.timers.retain(|(at, _)| *at > now);
        for (_, lease_id) in due {
            self.feed(ProviderInput::Timer { lease_id });
        }
    }

    fn crash(&mut self) {
        self.engine = ProviderEngine::new(self.pk.clone(), self.config.clone());
        self.timers.clear();
        self.hooks.clear();
        self.feed(ProviderInput::SetGroups(self.groups.clone()));
        let records: Vec<ProviderLease> = self.disk.values().cloned().collect();
        self.feed(ProviderInput::Restore(records));
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::Request(r) => self.request(r),
            Op::RawRequest(bytes) => {
                self.feed(ProviderInput::Request { token: 1, from: self.me, bytes });
            }
            Op::Replay(i) if !self.sent.is_empty() => {
                let bytes = self.sent[*i as usize % self.sent.len()].clone();
                self.feed(ProviderInput::Request { token: 2, from: id_of(&key(1)), bytes: &bytes });
            }
            Op::Release(r) => self.release(r),
            Op::RawRelease(bytes) => {
                self.feed(ProviderInput::Release { token: 3, from: self.me, bytes });
            }
            Op::Status { lease, from } => {
                let lease_id = self.pick_lease(*lease);
                let from = id_of(&key(from % RENTERS + 1));
                self.feed(ProviderInput::Status { token: 4, from, lease_id });
            }
            Op::HookDone { lease, result } => {
                let lease_id = if self.hooks.is_empty() {
                    self.pick_lease(*lease)
                } else {
                    self.hooks.remove(*lease as usize % self.hooks.len())
                };
                let result = match result {
                    HookResult::Ok(s) => Ok(s.clone()),
                    HookResult::Empty => Ok("{}".to_string()),
                    HookResult::TooLong => Ok("x".repeat(MAX_ACCESS_LEN + 1)),
                    HookResult::Err(e) => Err(e.clone()),
                };
                self.feed(ProviderInput::HookDone { lease_id, result });
            }
            Op::Timer { lease } => {
                let lease_id = self.pick_lease(*lease);
                self.feed(ProviderInput::Timer { lease_id });
            }
            Op::Advance(tenths) => self.advance(*tenths as u64 * 100),
            Op::PersistFailed { lease, token } => {
                let lease_id = self.pick_lease(*lease);
                self.hooks.retain(|h| *h != lease_id);
                self.feed(ProviderInput::PersistFailed {
                    lease_id,
                    tokens: token.iter().copied().collect(),
                    error: "disk full".into(),
                });
            }
            Op::Groups(c) => self.change_groups(c),
            Op::Policy { max_per, deny, allow } => {
                let p = self.engine.policy_mut();
                p.max_leases_per_renter = (*max_per % 4) as usize;
                p.deny = deny.iter().map(|n| id_of(&key(n % RENTERS + 1))).collect();
                p.allow = allow.map(|n| [id_of(&key(n % RENTERS + 1))].into_iter().collect());
                self.config.policy = p.clone();
            }
            Op::Crash => self.crash(),
            _ => {}
        }
    }

    /// Finishes every hook and runs time past every lease's end: everything ends, all GPUs
    /// are free, and the persisted records agree with the engine.
    fn drain(&mut self) {
        for lease_id in std::mem::take(&mut self.hooks) {
            self.feed(ProviderInput::HookDone { lease_id, result: Ok("{}".into()) });
        }
        // Longest possible lease: u16::MAX seconds (a changed group), plus margin.
        self.now = self.now.plus_millis(u16::MAX as u64 * 1000 + 3_600_000);
        let mut rounds = 0;
        while let Some((_, lease_id)) = self.timers.pop() {
            self.feed(ProviderInput::Timer { lease_id });
            rounds += 1;
            assert!(rounds < 100_000, "timers keep rescheduling after every lease's end");
        }
        for l in self.engine.leases() {
            assert!(l.state.is_terminal(), "lease {} never ended: {:?}", l.lease_id, l.state);
            assert_eq!(
                self.disk.get(&l.lease_id).map(|d| d.state),
                Some(l.state),
                "disk and engine disagree"
            );
        }
        assert!(self.engine.allocations().is_empty(), "GPUs still allocated after every lease ended");
    }
}

fuzz_target!(|script: Script| {
    let mut h = Harness::new(script.start_hook, (script.max_leases_per_renter % 4) as usize);
    for op in script.ops.iter().take(256) {
        h.step(op);
    }
    h.drain();
});
