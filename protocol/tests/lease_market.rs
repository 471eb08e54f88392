//! Market-scale properties of the lease state machines: property tests over random input
//! sequences, and a seeded simulation of many renters and providers with message loss,
//! delays and provider crashes. Both check that no GPU is ever in two live leases and that
//! every lease reaches exactly one terminal state.

mod common;
use common::lease_rig::provider_engine;
use common::*;
use gpumesh_protocol::lease::messages::*;
use gpumesh_protocol::lease::provider::*;
use gpumesh_protocol::lease::renter::*;
use gpumesh_protocol::lease::{GpuUnit, LeaseState, ProviderLease};
use gpumesh_protocol::wire::{LeaseRpc, LeaseRpcReply};
use gpumesh_protocol::*;
use proptest::prelude::{Just, ProptestConfig, Strategy, any, prop, prop_oneof, proptest};
use std::collections::{BTreeMap, HashMap, HashSet};

const T0: Timestamp = Timestamp(1_700_000_000_000);

fn make_provider(k: &SigningKey, gpus: u32, hook: bool, max_per: usize) -> (ProviderEngine, GpuGroup) {
    let mut e = provider_engine(k, hook, Policy { max_leases_per_renter: max_per, ..Policy::default() });
    let spec = gpu("A100", 81920);
    let pid = id_of(k);
    let g = GpuGroup {
        offer_id: OfferId::derive(&pid, &spec.group_key()),
        gpus: (0..gpus).map(|i| GpuUnit { uuid: format!("{pid}-gpu{i}"), index: i }).collect(),
        price: Price(1_000_000),
        min_duration_s: 1,
        max_duration_s: 600,
    };
    e.handle(ProviderInput::SetGroups(vec![g.clone()]), T0);
    (e, g)
}

/// The provider's durable view: the last persisted record of each lease.
#[derive(Default)]
struct Disk(BTreeMap<LeaseId, ProviderLease>);

impl Disk {
    fn apply(&mut self, out: &[ProviderOutput]) {
        for o in out {
            if let ProviderOutput::Persist(l) = o {
                if let Some(old) = self.0.get(&l.lease_id) {
                    assert!(
                        !(old.state.is_terminal() && l.state.is_live()),
                        "terminal lease came back to life: {l:?}"
                    );
                }
                self.0.insert(l.lease_id, l.clone());
            }
        }
    }
}

/// No GPU in two live leases, in the engine and on disk; the allocation map agrees.
fn check_exclusive(e: &ProviderEngine, disk: &Disk) {
    let mut held: HashMap<&str, LeaseId> = HashMap::new();
    for l in e.leases().filter(|l| l.state.is_live()) {
        for g in &l.gpus {
            if let Some(other) = held.insert(&g.uuid, l.lease_id) {
                panic!("GPU {} in leases {other} and {}", g.uuid, l.lease_id);
            }
            assert_eq!(e.allocations().get(&g.uuid), Some(&l.lease_id));
        }
    }
    assert_eq!(held.len(), e.allocations().len(), "allocation map holds GPUs of no live lease");
    let mut on_disk: HashSet<&str> = HashSet::new();
    for l in disk.0.values().filter(|l| l.state.is_live()) {
        for g in &l.gpus {
            assert!(on_disk.insert(&g.uuid), "GPU {} in two live leases on disk", g.uuid);
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Request { renter: u8, gpus: u32, duration_s: u64 },
    HookOk(usize),
    HookErr(usize),
    Release(usize),
    Advance(u64),
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6, 0u32..4, 0u64..700).prop_map(|(renter, gpus, duration_s)| Op::Request { renter, gpus, duration_s }),
        2 => any::<usize>().prop_map(Op::HookOk),
        1 => any::<usize>().prop_map(Op::HookErr),
        2 => any::<usize>().prop_map(Op::Release),
        2 => (0u64..400_000).prop_map(Op::Advance),
        1 => Just(Op::Crash),
    ]
}

fn run_ops(ops: Vec<Op>, hook: bool) {
    let pk = key(200);
    let (mut e, g) = make_provider(&pk, 4, hook, 2);
    let mut disk = Disk::default();
    let mut now = T0;
    let mut timers: Vec<(Timestamp, LeaseId)> = Vec::new();
    let mut hooks: Vec<LeaseId> = Vec::new();
    let mut granted: Vec<(u8, LeaseId)> = Vec::new();
    let mut ended: HashMap<LeaseId, usize> = HashMap::new();
    let mut nonce = 0u64;
    let feed = |e: &mut ProviderEngine,
                input: ProviderInput<'_>,
                now: Timestamp,
                disk: &mut Disk,
                timers: &mut Vec<(Timestamp, LeaseId)>,
                hooks: &mut Vec<LeaseId>,
                ended: &mut HashMap<LeaseId, usize>| {
        let out = e.handle(input, now);
        disk.apply(&out);
        for o in &out {
            match o {
                ProviderOutput::ScheduleEnd { lease_id, at } => timers.push((*at, *lease_id)),
                ProviderOutput::RunStartHook(l) => hooks.push(l.lease_id),
                ProviderOutput::Event(ProviderEvent::Ended { lease_id, .. }) => {
                    *ended.entry(*lease_id).or_default() += 1
                }
                _ => {}
            }
        }
        out
    };
    for op in ops {
        match op {
            Op::Request { renter, gpus, duration_s } => {
                nonce += 1;
                let rk = key(renter + 1);
                let mut n = [0u8; 16];
                n[..8].copy_from_slice(&nonce.to_le_bytes());
                let req = envelope::seal(
                    &rk,
                    &LeaseRequest {
                        v: PROTOCOL_VERSION,
                        network: NET.into(),
                        renter: id_of(&rk),
                        provider: id_of(&pk),
                        offer_id: g.offer_id,
                        gpus,
                        duration_s,
                        price: g.price,
                        max_price: g.price,
                        nonce: Nonce(n),
                        issued_at: now,
                        ssh_key: None,
                    },
                );
                let out = feed(
                    &mut e,
                    ProviderInput::Request { token: nonce, from: id_of(&rk), bytes: &req },
                    now,
                    &mut disk,
                    &mut timers,
                    &mut hooks,
                    &mut ended,
                );
                if let Some(ProviderOutput::Reply { reply: LeaseRpcReply::Grant(b), .. }) =
                    out.iter().find(|o| matches!(o, ProviderOutput::Reply { .. }))
                {
                    granted.push((renter, envelope::open::<LeaseGrant>(&b.0).unwrap().lease_id));
                }
            }
            Op::HookOk(i) | Op::HookErr(i) if !hooks.is_empty() => {
                let id = hooks.remove(i % hooks.len());
                let result =
                    if matches!(op, Op::HookOk(_)) { Ok("{}".to_string()) } else { Err("x".to_string()) };
                let out = feed(
                    &mut e,
                    ProviderInput::HookDone { lease_id: id, result },
                    now,
                    &mut disk,
                    &mut timers,
                    &mut hooks,
                    &mut ended,
                );
                if out
                    .iter()
                    .any(|o| matches!(o, ProviderOutput::Reply { reply: LeaseRpcReply::Grant(_), .. }))
                {
                    granted.push((0, id));
                }
            }
            Op::Release(i) if !granted.is_empty() => {
                let (renter, id) = granted[i % granted.len()];
                let owner = e.lease(&id).map(|l| l.renter);
                let rk = (1..=6).map(key).find(|k| Some(id_of(k)) == owner).unwrap_or(key(renter + 1));
                let rel = envelope::seal(
                    &rk,
                    &LeaseRelease {
                        v: PROTOCOL_VERSION,
                        network: NET.into(),
                        lease_id: id,
                        renter: id_of(&rk),
                        provider: id_of(&pk),
                        issued_at: now,
                    },
                );
                feed(
                    &mut e,
                    ProviderInput::Release { token: 0, from: id_of(&rk), bytes: &rel },
                    now,
                    &mut disk,
                    &mut timers,
                    &mut hooks,
                    &mut ended,
                );
            }
            Op::Advance(ms) => {
                now = now.plus_millis(ms);
                let due: Vec<_> = timers.iter().filter(|(at, _)| *at <= now).copied().collect();
                timers.retain(|(at, _)| *at > now);
                for (_, id) in due {
                    feed(
                        &mut e,
                        ProviderInput::Timer { lease_id: id },
                        now,
                        &mut disk,
                        &mut timers,
                        &mut hooks,
                        &mut ended,
                    );
                }
            }
            Op::Crash => {
                let (mut e2, _) = make_provider(&pk, 4, hook, 2);
                timers.clear();
                hooks.clear();
                feed(
                    &mut e2,
                    ProviderInput::Restore(disk.0.values().cloned().collect()),
                    now,
                    &mut disk,
                    &mut timers,
                    &mut hooks,
                    &mut ended,
                );
                e = e2;
            }
            _ => {}
        }
        check_exclusive(&e, &disk);
    }
    // Drain: finish every hook and run time past every end.
    for id in std::mem::take(&mut hooks) {
        feed(
            &mut e,
            ProviderInput::HookDone { lease_id: id, result: Ok("{}".into()) },
            now,
            &mut disk,
            &mut timers,
            &mut hooks,
            &mut ended,
        );
    }
    now = now.plus_millis(10 * 3_600_000);
    while let Some((_, id)) = timers.pop() {
        feed(
            &mut e,
            ProviderInput::Timer { lease_id: id },
            now,
            &mut disk,
            &mut timers,
            &mut hooks,
            &mut ended,
        );
    }
    check_exclusive(&e, &disk);
    for l in e.leases() {
        assert!(l.state.is_terminal(), "lease {} never ended: {:?}", l.lease_id, l.state);
        assert_eq!(disk.0[&l.lease_id].state, l.state, "disk and engine disagree");
    }
    for (id, n) in ended {
        assert_eq!(n, 1, "lease {id} ended {n} times");
    }
    assert!(e.allocations().is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn no_gpu_twice_and_one_terminal_state_without_hooks(ops in prop::collection::vec(op(), 1..80)) {
        run_ops(ops, false);
    }

    #[test]
    fn no_gpu_twice_and_one_terminal_state_with_hooks(ops in prop::collection::vec(op(), 1..80)) {
        run_ops(ops, true);
    }
}

// ---------------------------------------------------------------------------------------
// Seeded market simulation.

struct Msg {
    at: Timestamp,
    from_renter: usize,
    provider: usize,
    lease_id: LeaseId,
    body: Wire,
}

enum Wire {
    /// Renter to provider.
    Rpc(LeaseRpc),
    /// Provider to renter.
    Reply(LeaseRpcReply),
    /// The reply was lost: the renter's request times out.
    Lost,
}

fn simulate(seed: u64) {
    let mut rng = Rng::new(seed);
    let n_providers = 3 + rng.below(3) as usize;
    let n_renters = 4 + rng.below(6) as usize;
    let pkeys: Vec<SigningKey> = (0..n_providers).map(|i| key(100 + i as u8)).collect();
    let mut providers: Vec<(ProviderEngine, GpuGroup)> =
        pkeys.iter().map(|k| make_provider(k, 1 + rng.below(4) as u32, true, 0)).collect();
    let mut disks: Vec<Disk> = (0..n_providers).map(|_| Disk::default()).collect();
    let mut renters: Vec<RenterEngine> = (0..n_renters)
        .map(|i| {
            RenterEngine::new(
                key(1 + i as u8),
                RenterConfig { network: NET.into(), receipt_grace_ms: 120_000, status_retry_ms: 2_000 },
            )
        })
        .collect();
    let mut now = T0;
    let mut net: Vec<Msg> = Vec::new();
    let mut p_timers: Vec<(Timestamp, usize, LeaseId)> = Vec::new();
    let mut r_timers: Vec<(Timestamp, usize, LeaseId)> = Vec::new();
    let mut hooks: Vec<(Timestamp, usize, LeaseId)> = Vec::new();
    let mut ended: HashMap<(usize, LeaseId), usize> = HashMap::new();
    let mut grants = 0usize;

    macro_rules! provider_out {
        ($p:expr, $out:expr, $reply_to:expr) => {{
            let out: Vec<ProviderOutput> = $out;
            disks[$p].apply(&out);
            for o in out {
                match o {
                    ProviderOutput::Reply { reply, .. } => {
                        if let Some((r, lid)) = $reply_to {
                            let (at, body) = if rng.below(10) > 0 {
                                (now.plus_millis(rng.below(500)), Wire::Reply(reply))
                            } else {
                                (now.plus_millis(5_000), Wire::Lost)
                            };
                            net.push(Msg { at, from_renter: r, provider: $p, lease_id: lid, body });
                        }
                    }
                    ProviderOutput::ScheduleEnd { lease_id, at } => p_timers.push((at, $p, lease_id)),
                    ProviderOutput::RunStartHook(l) => {
                        hooks.push((now.plus_millis(rng.below(3000)), $p, l.lease_id))
                    }
                    ProviderOutput::Event(ProviderEvent::Ended { lease_id, .. }) => {
                        *ended.entry(($p, lease_id)).or_default() += 1
                    }
                    ProviderOutput::Event(ProviderEvent::Granted { .. }) => grants += 1,
                    _ => {}
                }
            }
        }};
    }

    let steps = 400 + rng.below(400);
    for _ in 0..steps {
        now = now.plus_millis(rng.below(2_000));
        match rng.below(10) {
            0..=3 => {
                // A renter leases from a random provider.
                let r = rng.below(n_renters as u64) as usize;
                let p = rng.below(n_providers as u64) as usize;
                let g = &providers[p].1;
                let ask = LeaseAsk {
                    provider: id_of(&pkeys[p]),
                    offer_id: g.offer_id,
                    price: g.price,
                    max_price: g.price,
                    gpus: 1 + rng.below(2) as u32,
                    duration_s: 5 + rng.below(120),
                    ssh_key: None,
                    nonce: Nonce(rng.bytes16()),
                };
                let outs = renters[r].handle(RenterInput::Lease(ask), now).unwrap();
                route_renter(&mut net, &mut r_timers, r, &pkeys, outs, now, &mut rng);
            }
            4 => {
                // A renter releases one of its active leases.
                let r = rng.below(n_renters as u64) as usize;
                let active: Vec<LeaseId> = renters[r]
                    .leases()
                    .filter(|l| l.state == LeaseState::Active)
                    .map(|l| l.lease_id)
                    .collect();
                if let Some(id) = active.get(rng.below(active.len().max(1) as u64) as usize) {
                    let outs = renters[r].handle(RenterInput::Release { lease_id: *id }, now).unwrap();
                    route_renter(&mut net, &mut r_timers, r, &pkeys, outs, now, &mut rng);
                }
            }
            5 if rng.below(8) == 0 => {
                // A provider crashes and restarts from disk.
                let p = rng.below(n_providers as u64) as usize;
                let gpus = providers[p].1.gpus.len() as u32;
                let mut fresh = make_provider(&pkeys[p], gpus, true, 0);
                p_timers.retain(|t| t.1 != p);
                hooks.retain(|h| h.1 != p);
                let out = fresh.0.handle(ProviderInput::Restore(disks[p].0.values().cloned().collect()), now);
                providers[p] = fresh;
                provider_out!(p, out, None::<(usize, LeaseId)>);
            }
            _ => {}
        }
        // Deliver due messages, hooks and timers.
        net.sort_by_key(|m| m.at);
        while net.first().is_some_and(|m| m.at <= now) {
            let m = net.remove(0);
            match m.body {
                Wire::Rpc(rpc) => {
                    let from = id_of(&key(1 + m.from_renter as u8));
                    let input = match &rpc {
                        LeaseRpc::Request(b) => ProviderInput::Request { token: 0, from, bytes: &b.0 },
                        LeaseRpc::Release(b) => ProviderInput::Release { token: 0, from, bytes: &b.0 },
                        LeaseRpc::Status(id) => ProviderInput::Status { token: 0, from, lease_id: *id },
                    };
                    let out = providers[m.provider].0.handle(input, now);
                    provider_out!(m.provider, out, Some((m.from_renter, m.lease_id)));
                }
                Wire::Reply(reply) => {
                    let outs = renters[m.from_renter]
                        .handle(RenterInput::Reply { lease_id: m.lease_id, reply }, now)
                        .unwrap();
                    route_renter(&mut net, &mut r_timers, m.from_renter, &pkeys, outs, now, &mut rng);
                }
                Wire::Lost => {
                    let input = RenterInput::SendFailed { lease_id: m.lease_id, error: "timeout".into() };
                    let outs = renters[m.from_renter].handle(input, now).unwrap();
                    route_renter(&mut net, &mut r_timers, m.from_renter, &pkeys, outs, now, &mut rng);
                }
            }
        }
        hooks.sort_by_key(|h| h.0);
        while hooks.first().is_some_and(|h| h.0 <= now) {
            let (_, p, id) = hooks.remove(0);
            let result =
                if rng.below(6) == 0 { Err("hook failed".to_string()) } else { Ok("{}".to_string()) };
            let renter = providers[p].0.lease(&id).map(|l| l.renter);
            let r = (0..n_renters).find(|r| Some(id_of(&key(1 + *r as u8))) == renter);
            let out = providers[p].0.handle(ProviderInput::HookDone { lease_id: id, result }, now);
            provider_out!(p, out, r.map(|r| (r, id)));
        }
        for (at, p, id) in std::mem::take(&mut p_timers) {
            if at <= now {
                let out = providers[p].0.handle(ProviderInput::Timer { lease_id: id }, now);
                provider_out!(p, out, None::<(usize, LeaseId)>);
            } else {
                p_timers.push((at, p, id));
            }
        }
        for (at, r, id) in std::mem::take(&mut r_timers) {
            if at <= now {
                let outs = renters[r].handle(RenterInput::Timer { lease_id: id }, now).unwrap();
                route_renter(&mut net, &mut r_timers, r, &pkeys, outs, now, &mut rng);
            } else {
                r_timers.push((at, r, id));
            }
        }
        for (p, (e, _)) in providers.iter().enumerate() {
            check_exclusive(e, &disks[p]);
        }
    }
    // Every lease a renter holds as active is known to its provider as active or ended.
    for (r, re) in renters.iter().enumerate() {
        for l in re.leases().filter(|l| l.state == LeaseState::Active) {
            let p = pkeys.iter().position(|k| id_of(k) == l.provider).unwrap();
            let pl = providers[p].0.lease(&l.lease_id);
            assert!(
                pl.is_some_and(|pl| matches!(
                    pl.state,
                    LeaseState::Active | LeaseState::Expired | LeaseState::Released
                )),
                "seed {seed}: renter {r} holds {} as active but provider has {:?}",
                l.lease_id,
                pl.map(|l| l.state)
            );
        }
    }
    assert!(grants > 0 && !ended.is_empty(), "seed {seed}: the market never traded");
    for ((p, id), n) in ended {
        assert_eq!(n, 1, "seed {seed}: provider {p} ended lease {id} {n} times");
    }
}

fn route_renter(
    net: &mut Vec<Msg>,
    timers: &mut Vec<(Timestamp, usize, LeaseId)>,
    r: usize,
    pkeys: &[SigningKey],
    outs: Vec<RenterOutput>,
    now: Timestamp,
    rng: &mut Rng,
) {
    for o in outs {
        match o {
            RenterOutput::Send { provider, lease_id, rpc } => {
                let p = pkeys.iter().position(|k| id_of(k) == provider).unwrap();
                net.push(Msg {
                    at: now.plus_millis(rng.below(500)),
                    from_renter: r,
                    provider: p,
                    lease_id,
                    body: Wire::Rpc(rpc),
                });
            }
            RenterOutput::ScheduleTimer { lease_id, at } => timers.push((at, r, lease_id)),
            _ => {}
        }
    }
}

#[test]
fn seeded_market_simulation_never_double_leases() {
    let base: u64 = std::env::var("GPUMESH_SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let runs: u64 = std::env::var("GPUMESH_SIM_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    for seed in base..base + runs {
        let result = std::panic::catch_unwind(|| simulate(seed));
        if let Err(e) = result {
            eprintln!(
                "simulation failed with seed {seed} (rerun: GPUMESH_SIM_SEED={seed} GPUMESH_SIM_RUNS=1)"
            );
            std::panic::resume_unwind(e);
        }
    }
}
