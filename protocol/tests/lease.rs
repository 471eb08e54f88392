//! The lease state machines, scenario by scenario: grants, every reject reason, hooks,
//! release, expiry, restore after a crash, and renter-side checks of provider replies.

mod common;
use common::*;
use gpumesh_protocol::bytes::Bytes;
use gpumesh_protocol::lease::messages::*;
use gpumesh_protocol::lease::provider::*;
use gpumesh_protocol::lease::renter::*;
use gpumesh_protocol::lease::{GpuUnit, LeaseState};
use gpumesh_protocol::wire::{LeaseRpc, LeaseRpcReply};
use gpumesh_protocol::*;

const NOW: Timestamp = Timestamp(1_700_000_000_000);

fn group(provider: &NodeId, n: u32) -> GpuGroup {
    let gpu = gpu("H100-SXM-80GB", 81559);
    GpuGroup {
        offer_id: OfferId::derive(provider, &gpu.group_key()),
        gpus: (0..n).map(|i| GpuUnit { uuid: format!("GPU-{i}"), index: i }).collect(),
        price: Price(2_000_000),
        min_duration_s: 60,
        max_duration_s: 3600,
    }
}

fn provider(n: u32, hook: bool) -> (ProviderEngine, GpuGroup) {
    let k = key(100);
    let mut e = ProviderEngine::new(
        k.clone(),
        ProviderConfig {
            network: NET.into(),
            max_clock_skew_ms: 30_000,
            request_max_age_ms: 60_000,
            policy: Policy::default(),
            start_hook: hook,
        },
    );
    let g = group(&id_of(&k), n);
    e.handle(ProviderInput::SetGroups(vec![g.clone()]), NOW);
    (e, g)
}

fn request(
    renter: &SigningKey,
    g: &GpuGroup,
    gpus: u32,
    nonce: u8,
    f: impl FnOnce(&mut LeaseRequest),
) -> Vec<u8> {
    let mut r = LeaseRequest {
        v: PROTOCOL_VERSION,
        network: NET.into(),
        renter: id_of(renter),
        provider: id_of(&key(100)),
        offer_id: g.offer_id,
        gpus,
        duration_s: 600,
        price: g.price,
        max_price: Price(3_000_000),
        nonce: Nonce([nonce; 16]),
        issued_at: NOW,
        ssh_key: None,
    };
    f(&mut r);
    envelope::seal(renter, &r)
}

fn send(e: &mut ProviderEngine, token: u64, bytes: &[u8], now: Timestamp) -> Vec<ProviderOutput> {
    e.handle(ProviderInput::Request { token, from: NodeId::from_bytes([0; 32]), bytes }, now)
}

fn reply_of(out: &[ProviderOutput]) -> &LeaseRpcReply {
    out.iter()
        .find_map(|o| match o {
            ProviderOutput::Reply { reply, .. } => Some(reply),
            _ => None,
        })
        .expect("a reply")
}

fn reject_reason(out: &[ProviderOutput]) -> Option<RejectReason> {
    match reply_of(out) {
        LeaseRpcReply::Reject(b) => Some(envelope::open::<LeaseReject>(&b.0).unwrap().reason),
        _ => None,
    }
}

#[test]
fn a_grant_is_persisted_before_it_is_sent() {
    let (mut e, g) = provider(2, false);
    let out = send(&mut e, 1, &request(&key(1), &g, 1, 1, |_| {}), NOW);
    let persist =
        out.iter().position(|o| matches!(o, ProviderOutput::Persist(l) if l.state == LeaseState::Active));
    let reply = out.iter().position(|o| matches!(o, ProviderOutput::Reply { .. }));
    assert!(persist.unwrap() < reply.unwrap(), "{out:?}");
    let LeaseRpcReply::Grant(b) = reply_of(&out) else { panic!("not a grant: {out:?}") };
    let grant = envelope::open::<LeaseGrant>(&b.0).unwrap();
    assert_eq!(grant.gpu_uuids, vec!["GPU-0".to_string()]);
    assert_eq!(grant.end.millis_since(grant.start), 600_000);
    assert_eq!(e.free_gpus(&g.offer_id), 1);
}

#[test]
fn every_reject_reason_is_reachable() {
    type Mutation = Box<dyn Fn(&mut LeaseRequest)>;
    let cases: Vec<(RejectReason, Mutation)> = vec![
        (
            RejectReason::PriceAboveMax,
            Box::new(|r| {
                r.max_price = Price(1_000_000);
                r.price = Price(1_000_000);
            }),
        ),
        (RejectReason::PriceChanged, Box::new(|r| r.price = Price(1_500_000))),
        (RejectReason::DurationOutOfRange, Box::new(|r| r.duration_s = 30)),
        (RejectReason::DurationOutOfRange, Box::new(|r| r.duration_s = 7200)),
        (RejectReason::OfferUnknownOrExpired, Box::new(|r| r.offer_id = OfferId::from_bytes([9; 8]))),
        (RejectReason::NetworkMismatch, Box::new(|r| r.network = "other".into())),
        (RejectReason::InvalidRequest, Box::new(|r| r.gpus = 0)),
        (RejectReason::InvalidRequest, Box::new(|r| r.gpus = u32::MAX)),
        (RejectReason::NoCapacity, Box::new(|r| r.gpus = 3)),
        (RejectReason::Replayed, Box::new(|r| r.issued_at = Timestamp(NOW.0 - 120_000))),
        (RejectReason::InvalidRequest, Box::new(|r| r.issued_at = NOW.plus_millis(600_000))),
    ];
    for (i, (want, f)) in cases.into_iter().enumerate() {
        let (mut e, g) = provider(2, false);
        let out = send(&mut e, 1, &request(&key(1), &g, 1, i as u8, f), NOW);
        assert_eq!(reject_reason(&out), Some(want), "case {i}");
        assert_eq!(e.free_gpus(&g.offer_id), 2, "case {i} must not hold GPUs");
    }
}

#[test]
fn a_forged_request_signature_is_rejected_as_bad_signature() {
    let (mut e, g) = provider(2, false);
    let mut bytes = request(&key(1), &g, 1, 1, |_| {});
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    assert_eq!(reject_reason(&send(&mut e, 1, &bytes, NOW)), Some(RejectReason::BadSignature));
    // Signed by key 2 while naming key 1 as renter.
    let (mut e, g) = provider(2, false);
    let mut r: LeaseRequest = envelope::decode_body(
        envelope::RawEnvelope::parse(&request(&key(1), &g, 1, 1, |_| {})).unwrap().body,
    )
    .unwrap();
    r.nonce = Nonce([7; 16]);
    let forged = envelope::seal(&key(2), &r);
    assert_eq!(reject_reason(&send(&mut e, 1, &forged, NOW)), Some(RejectReason::BadSignature));
    assert_eq!(reject_reason(&send(&mut e, 2, b"garbage", NOW)), Some(RejectReason::InvalidRequest));
}

#[test]
fn replayed_nonce_is_rejected() {
    let (mut e, g) = provider(4, false);
    let req = request(&key(1), &g, 1, 1, |_| {});
    assert_eq!(reject_reason(&send(&mut e, 1, &req, NOW)), None);
    assert_eq!(reject_reason(&send(&mut e, 2, &req, NOW)), Some(RejectReason::Replayed));
    assert_eq!(e.free_gpus(&g.offer_id), 3);
}

/// The table of seen nonces is pruned only now and then on a busy provider; every nonce still
/// inside the replay window must survive the pruning.
#[test]
fn a_nonce_stays_refused_within_the_window_after_thousands_of_requests() {
    let (mut e, g) = provider(1, false);
    let reqs: Vec<Vec<u8>> = (0..3000u32)
        .map(|i| {
            request(&key(1), &g, 1, 0, |r| {
                r.nonce.0[..4].copy_from_slice(&i.to_be_bytes());
                r.issued_at = NOW.plus_millis(u64::from(i));
            })
        })
        .collect();
    for (i, req) in reqs.iter().enumerate() {
        let now = NOW.plus_millis(i as u64);
        let want = if i == 0 { None } else { Some(RejectReason::NoCapacity) };
        assert_eq!(reject_reason(&send(&mut e, i as u64, req, now)), want, "request {i}");
    }
    let now = NOW.plus_millis(3000);
    for i in [0, 1, 1024, 1500, 2999] {
        assert_eq!(
            reject_reason(&send(&mut e, 9000, &reqs[i], now)),
            Some(RejectReason::Replayed),
            "request {i}"
        );
    }
}

#[test]
fn policy_denies_and_limits() {
    let (mut e, g) = provider(4, false);
    e.policy_mut().deny.insert(id_of(&key(1)));
    assert_eq!(
        reject_reason(&send(&mut e, 1, &request(&key(1), &g, 1, 1, |_| {}), NOW)),
        Some(RejectReason::DeniedByPolicy)
    );
    e.policy_mut().allow = Some([id_of(&key(3))].into());
    assert_eq!(
        reject_reason(&send(&mut e, 2, &request(&key(2), &g, 1, 2, |_| {}), NOW)),
        Some(RejectReason::DeniedByPolicy)
    );
    assert_eq!(reject_reason(&send(&mut e, 3, &request(&key(3), &g, 1, 3, |_| {}), NOW)), None);
    e.policy_mut().max_leases_per_renter = 1;
    assert_eq!(
        reject_reason(&send(&mut e, 4, &request(&key(3), &g, 1, 4, |_| {}), NOW)),
        Some(RejectReason::TooManyLeases)
    );
}

#[test]
fn twenty_requests_for_the_last_gpu_yield_one_grant() {
    let (mut e, g) = provider(1, false);
    let grants = (0..20u8)
        .filter(|i| {
            reject_reason(&send(&mut e, *i as u64, &request(&key(i + 1), &g, 1, *i, |_| {}), NOW)).is_none()
        })
        .count();
    assert_eq!(grants, 1);
}

#[test]
fn start_hook_success_and_failure() {
    let (mut e, g) = provider(1, true);
    let out = send(&mut e, 1, &request(&key(1), &g, 1, 1, |_| {}), NOW);
    assert!(out.iter().any(|o| matches!(o, ProviderOutput::Persist(l) if l.state == LeaseState::Starting)));
    let lease = out.iter().find_map(|o| match o {
        ProviderOutput::RunStartHook(l) => Some(l.clone()),
        _ => None,
    });
    let lease = lease.expect("start hook requested");
    assert!(!out.iter().any(|o| matches!(o, ProviderOutput::Reply { .. })), "no reply before the hook ends");
    assert_eq!(e.free_gpus(&g.offer_id), 0, "GPUs are reserved while the hook runs");
    let out = e.handle(ProviderInput::HookDone { lease_id: lease.lease_id, result: Err("boom".into()) }, NOW);
    assert_eq!(reject_reason(&out), Some(RejectReason::ProviderError));
    assert!(out.iter().any(|o| matches!(o, ProviderOutput::RunEndHook(_))));
    assert_eq!(e.free_gpus(&g.offer_id), 1, "a failed hook frees the GPUs");

    let out = send(&mut e, 2, &request(&key(1), &g, 1, 2, |_| {}), NOW);
    let id = out.iter().find_map(|o| match o {
        ProviderOutput::RunStartHook(l) => Some(l.lease_id),
        _ => None,
    });
    let out = e.handle(
        ProviderInput::HookDone {
            lease_id: id.unwrap(),
            result: Ok(r#"{"host":"10.0.0.1","port":22}"#.into()),
        },
        NOW.plus_millis(1500),
    );
    let LeaseRpcReply::Grant(b) = reply_of(&out) else { panic!("{out:?}") };
    let grant = envelope::open::<LeaseGrant>(&b.0).unwrap();
    assert_eq!(grant.access, r#"{"host":"10.0.0.1","port":22}"#);
    assert_eq!(grant.start, NOW.plus_millis(1500), "the lease starts when granted");
}

/// Every reply in `out`, by token.
fn replies(out: &[ProviderOutput]) -> std::collections::BTreeMap<u64, LeaseRpcReply> {
    out.iter()
        .filter_map(|o| match o {
            ProviderOutput::Reply { token, reply } => Some((*token, reply.clone())),
            _ => None,
        })
        .collect()
}

/// A renter whose request went unanswered asks `status`. While the start hook runs there is
/// no grant yet; answering `unknown` would have the renter send the request again, get
/// `replayed`, and give the lease up while the provider grants it. The question waits for
/// the hook instead and gets the request's outcome.
#[test]
fn a_status_question_about_a_starting_lease_waits_for_its_start_hook() {
    let (mut e, g) = provider(2, true);
    let renter = key(1);
    let started = |out: &[ProviderOutput]| {
        out.iter()
            .find_map(|o| match o {
                ProviderOutput::RunStartHook(l) => Some(l.lease_id),
                _ => None,
            })
            .expect("start hook requested")
    };
    let status = |e: &mut ProviderEngine, token: u64, from: &SigningKey, lease_id: LeaseId| {
        e.handle(ProviderInput::Status { token, from: id_of(from), lease_id }, NOW)
    };

    // A hook that succeeds: the request gets the grant, the question `active` with it.
    let id = started(&send(&mut e, 1, &request(&renter, &g, 1, 1, |_| {}), NOW));
    assert!(replies(&status(&mut e, 2, &renter, id)).is_empty(), "held while the hook runs");
    assert_eq!(
        replies(&status(&mut e, 3, &key(9), id)).get(&3),
        Some(&LeaseRpcReply::Unknown),
        "not the renter"
    );
    let out = e.handle(ProviderInput::HookDone { lease_id: id, result: Ok("{}".into()) }, NOW);
    let r = replies(&out);
    let Some(LeaseRpcReply::Grant(grant)) = r.get(&1) else { panic!("{out:?}") };
    assert_eq!(r.get(&2), Some(&LeaseRpcReply::Active(grant.clone())));

    // A hook that fails: both get the reject.
    let id = started(&send(&mut e, 4, &request(&renter, &g, 1, 2, |_| {}), NOW));
    for t in 5..5 + MAX_HELD_STATUS as u64 {
        assert!(replies(&status(&mut e, t, &renter, id)).is_empty());
    }
    let over = 5 + MAX_HELD_STATUS as u64;
    assert_eq!(
        replies(&status(&mut e, over, &renter, id)).get(&over),
        Some(&LeaseRpcReply::Unknown),
        "over the cap"
    );
    let out = e.handle(ProviderInput::HookDone { lease_id: id, result: Err("boom".into()) }, NOW);
    let r = replies(&out);
    assert_eq!(r.len(), 1 + MAX_HELD_STATUS);
    for (token, reply) in r {
        let LeaseRpcReply::Reject(b) = reply else { panic!("token {token}: {reply:?}") };
        assert_eq!(envelope::open::<LeaseReject>(&b.0).unwrap().reason, RejectReason::ProviderError);
    }
}

/// The grant's write fails after a successful start hook: the node drops the grant and the
/// answers to held status questions, and hands their tokens back. Each stream then gets one
/// `provider-error` reject (none is left waiting for its timeout), the lease is failed and
/// its GPUs are free again.
#[test]
fn a_failed_grant_write_after_the_start_hook_answers_every_stream_once() {
    let (mut e, g) = provider(1, true);
    let renter = key(1);
    let out = send(&mut e, 1, &request(&renter, &g, 1, 1, |_| {}), NOW);
    let id = out
        .iter()
        .find_map(|o| match o {
            ProviderOutput::RunStartHook(l) => Some(l.lease_id),
            _ => None,
        })
        .expect("start hook requested");
    for t in [2, 3] {
        e.handle(ProviderInput::Status { token: t, from: id_of(&renter), lease_id: id }, NOW);
    }
    let out = e.handle(ProviderInput::HookDone { lease_id: id, result: Ok("{}".into()) }, NOW);
    assert!(matches!(&out[0], ProviderOutput::Persist(l) if l.state == LeaseState::Active), "{out:?}");
    let dropped: Vec<u64> = replies(&out).into_keys().collect();
    assert_eq!(dropped, vec![1, 2, 3]);

    // The node's input had no token of its own (a hook's end); it hands back the dropped ones,
    // one of them twice, as a node that also passed an input's token might.
    let tokens = [dropped.clone(), vec![1]].concat();
    let out = e.handle(ProviderInput::PersistFailed { lease_id: id, tokens, error: "disk full".into() }, NOW);
    assert!(matches!(&out[0], ProviderOutput::Persist(l) if l.state == LeaseState::Failed), "{out:?}");
    let answered: Vec<u64> = out
        .iter()
        .filter_map(|o| match o {
            ProviderOutput::Reply { token, reply: LeaseRpcReply::Reject(b) } => {
                let reject = envelope::open::<LeaseReject>(&b.0).unwrap();
                assert_eq!(reject.reason, RejectReason::ProviderError);
                assert_eq!(reject.detail, "disk full");
                Some(*token)
            }
            ProviderOutput::Reply { reply, .. } => panic!("not a reject: {reply:?}"),
            _ => None,
        })
        .collect();
    assert_eq!(answered, dropped, "each stream answered exactly once");
    assert_eq!(e.free_gpus(&g.offer_id), 1, "the failed lease's GPU is free again");
}

#[test]
fn release_gives_a_receipt_and_only_the_renter_may_release() {
    let (mut e, g) = provider(1, false);
    let out = send(&mut e, 1, &request(&key(1), &g, 1, 1, |_| {}), NOW);
    let LeaseRpcReply::Grant(b) = reply_of(&out) else { panic!() };
    let grant = envelope::open::<LeaseGrant>(&b.0).unwrap();
    let rel = |k: &SigningKey| {
        envelope::seal(
            k,
            &LeaseRelease {
                v: PROTOCOL_VERSION,
                network: NET.into(),
                lease_id: grant.lease_id,
                renter: id_of(k),
                provider: id_of(&key(100)),
                issued_at: NOW,
            },
        )
    };
    let from = NodeId::from_bytes([0; 32]);
    let out = e.handle(ProviderInput::Release { token: 2, from, bytes: &rel(&key(2)) }, NOW);
    assert_eq!(reject_reason(&out), Some(RejectReason::NotLeaseOwner));
    let later = NOW.plus_millis(90_000);
    let out = e.handle(ProviderInput::Release { token: 3, from, bytes: &rel(&key(1)) }, later);
    let LeaseRpcReply::Receipt(r) = reply_of(&out) else { panic!("{out:?}") };
    let receipt = envelope::open::<UsageReceipt>(&r.0).unwrap();
    assert_eq!(receipt.ended_by, EndReason::Released);
    assert_eq!(receipt.amount, 50_000, "90 s of one GPU at $2/h");
    assert_eq!(e.free_gpus(&g.offer_id), 1);
    // Releasing again answers with the same receipt.
    let out = e.handle(ProviderInput::Release { token: 4, from, bytes: &rel(&key(1)) }, later);
    assert_eq!(reply_of(&out), &LeaseRpcReply::Receipt(r.clone()));
}

#[test]
fn timers_end_leases_and_early_timers_reschedule() {
    let (mut e, g) = provider(1, false);
    let out = send(&mut e, 1, &request(&key(1), &g, 1, 1, |_| {}), NOW);
    let (lease_id, at) = out
        .iter()
        .find_map(|o| match o {
            ProviderOutput::ScheduleEnd { lease_id, at } => Some((*lease_id, *at)),
            _ => None,
        })
        .unwrap();
    let early = e.handle(ProviderInput::Timer { lease_id }, NOW.plus_millis(1));
    assert_eq!(early, vec![ProviderOutput::ScheduleEnd { lease_id, at }]);
    let out = e.handle(ProviderInput::Timer { lease_id }, at);
    assert!(out.iter().any(|o| matches!(
        o,
        ProviderOutput::Event(ProviderEvent::Ended { state: LeaseState::Expired, .. })
    )));
    assert_eq!(e.lease(&lease_id).unwrap().state, LeaseState::Expired);
    assert_eq!(e.free_gpus(&g.offer_id), 1);
}

#[test]
fn restore_keeps_active_leases_and_fails_half_started_ones() {
    let (mut e, g) = provider(3, true);
    let mut persisted = std::collections::HashMap::new();
    let mut run = |e: &mut ProviderEngine, input, now| {
        for o in e.handle(input, now) {
            if let ProviderOutput::Persist(l) = o {
                persisted.insert(l.lease_id, l);
            }
        }
    };
    let r1 = request(&key(1), &g, 1, 1, |_| {});
    let r2 = request(&key(2), &g, 1, 2, |_| {});
    run(&mut e, ProviderInput::Request { token: 1, from: id_of(&key(1)), bytes: &r1 }, NOW);
    run(&mut e, ProviderInput::Request { token: 2, from: id_of(&key(2)), bytes: &r2 }, NOW);
    let first = LeaseId::derive(&id_of(&key(100)), &id_of(&key(1)), &[1; 16]);
    run(&mut e, ProviderInput::HookDone { lease_id: first, result: Ok("{}".into()) }, NOW);
    // Crash: a new engine from what was persisted.
    let (mut e2, g2) = provider(3, true);
    let out = e2.handle(ProviderInput::Restore(persisted.values().cloned().collect()), NOW.plus_millis(5));
    assert_eq!(e2.lease(&first).unwrap().state, LeaseState::Active);
    let second = LeaseId::derive(&id_of(&key(100)), &id_of(&key(2)), &[2; 16]);
    assert_eq!(e2.lease(&second).unwrap().state, LeaseState::Failed);
    assert!(out.contains(&ProviderOutput::RunEndHook(e2.lease(&second).unwrap().clone())));
    assert_eq!(e2.free_gpus(&g2.offer_id), 2, "only the active lease holds a GPU");
    // Restoring after the end time expires the lease at once, with a receipt.
    let (mut e3, g3) = provider(3, true);
    e3.handle(ProviderInput::Restore(persisted.values().cloned().collect()), NOW.plus_millis(3_600_000));
    assert_eq!(e3.lease(&first).unwrap().state, LeaseState::Expired);
    assert!(e3.lease(&first).unwrap().receipt.is_some());
    assert_eq!(e3.free_gpus(&g3.offer_id), 3);
}

/// A renter's ask for one GPU of `g` for 600 s at the offer's price.
fn one_gpu_ask(g: &GpuGroup, nonce: u8) -> LeaseAsk {
    LeaseAsk {
        provider: id_of(&key(100)),
        offer_id: g.offer_id,
        price: g.price,
        max_price: g.price,
        gpus: 1,
        duration_s: 600,
        ssh_key: None,
        nonce: Nonce([nonce; 16]),
    }
}

/// Runs a renter engine (always key 1) against a provider engine in memory, message by message.
fn exchange(
    r: &mut RenterEngine,
    p: &mut ProviderEngine,
    outs: Vec<RenterOutput>,
    now: Timestamp,
) -> Vec<RenterEvent> {
    let mut events = Vec::new();
    let mut queue: std::collections::VecDeque<RenterOutput> = outs.into();
    while let Some(o) = queue.pop_front() {
        match o {
            RenterOutput::Send { lease_id, rpc, .. } => {
                let from = NodeId::from_bytes([1; 32]);
                let pin = match &rpc {
                    LeaseRpc::Request(b) => ProviderInput::Request { token: 0, from, bytes: &b.0 },
                    LeaseRpc::Release(b) => ProviderInput::Release { token: 0, from, bytes: &b.0 },
                    LeaseRpc::Status(id) => {
                        ProviderInput::Status { token: 0, from: id_of(&key(1)), lease_id: *id }
                    }
                };
                let pout = p.handle(pin, now);
                for po in pout {
                    if let ProviderOutput::Reply { reply, .. } = po {
                        queue.extend(r.handle(RenterInput::Reply { lease_id, reply }, now).unwrap());
                    }
                }
            }
            RenterOutput::Event(ev) => events.push(ev),
            _ => {}
        }
    }
    events
}

#[test]
fn renter_and_provider_complete_a_lease_lifecycle() {
    let (mut p, g) = provider(2, false);
    let mut r = RenterEngine::new(
        key(1),
        RenterConfig { network: NET.into(), receipt_grace_ms: 60_000, status_retry_ms: 1000 },
    );
    let ask = LeaseAsk {
        provider: id_of(&key(100)),
        offer_id: g.offer_id,
        price: g.price,
        max_price: Price(2_500_000),
        gpus: 2,
        duration_s: 600,
        ssh_key: Some("ssh-ed25519 AAAA test".into()),
        nonce: Nonce([5; 16]),
    };
    let outs = r.handle(RenterInput::Lease(ask), NOW).unwrap();
    let lease_id = match &outs[0] {
        RenterOutput::Persist(l) => l.lease_id,
        o => panic!("{o:?}"),
    };
    let ev = exchange(&mut r, &mut p, outs, NOW);
    assert_eq!(ev, vec![RenterEvent::Granted(lease_id)]);
    assert_eq!(r.lease(&lease_id).unwrap().gpu_uuids.len(), 2);
    // Expiry: the renter's timer asks for the receipt after the end.
    let end = r.lease(&lease_id).unwrap().end.unwrap();
    p.handle(ProviderInput::Timer { lease_id }, end);
    let outs = r.handle(RenterInput::Timer { lease_id }, end).unwrap();
    let ev = exchange(&mut r, &mut p, outs, end);
    assert_eq!(ev, vec![RenterEvent::Ended { lease_id, state: LeaseState::Expired }]);
    let l = r.lease(&lease_id).unwrap();
    assert!(l.receipt.is_some());
    assert_eq!(
        r.handle(RenterInput::Release { lease_id }, end),
        Err(RenterError::NotActive(lease_id, "expired"))
    );
}

#[test]
fn renter_refuses_a_grant_that_does_not_match_its_request() {
    let (mut p, g) = provider(2, false);
    let mut r = RenterEngine::new(
        key(1),
        RenterConfig { network: NET.into(), receipt_grace_ms: 60_000, status_retry_ms: 1000 },
    );
    let ask = |nonce| one_gpu_ask(&g, nonce);
    // Get a real grant for lease A, then present it as the answer to lease B.
    let outs_a = r.handle(RenterInput::Lease(ask(1)), NOW).unwrap();
    let RenterOutput::Send { rpc: LeaseRpc::Request(req_a), .. } = &outs_a[1] else { panic!() };
    let pout = p.handle(ProviderInput::Request { token: 0, from: id_of(&key(1)), bytes: &req_a.0 }, NOW);
    let grant_a = reply_of(&pout).clone();
    let outs_b = r.handle(RenterInput::Lease(ask(2)), NOW).unwrap();
    let RenterOutput::Persist(lb) = &outs_b[0] else { panic!() };
    let out = r.handle(RenterInput::Reply { lease_id: lb.lease_id, reply: grant_a }, NOW).unwrap();
    assert!(out.iter().any(|o| matches!(o, RenterOutput::Event(RenterEvent::Failed { .. }))), "{out:?}");
    // A grant signed by someone else is refused too.
    let outs_c = r.handle(RenterInput::Lease(ask(3)), NOW).unwrap();
    let RenterOutput::Persist(lc) = &outs_c[0] else { panic!() };
    let fake = LeaseGrant {
        v: PROTOCOL_VERSION,
        network: NET.into(),
        lease_id: lc.lease_id,
        provider: id_of(&key(66)),
        renter: id_of(&key(1)),
        offer_id: g.offer_id,
        request: Digest32::of(&lc.request.0),
        gpu_uuids: vec!["GPU-0".into()],
        gpu_indices: vec![0],
        start: NOW,
        end: NOW.plus_secs(600),
        price: g.price,
        access: "{}".into(),
    };
    let bytes = Bytes(envelope::seal(&key(66), &fake));
    let out = r
        .handle(RenterInput::Reply { lease_id: lc.lease_id, reply: LeaseRpcReply::Grant(bytes) }, NOW)
        .unwrap();
    assert!(out.iter().any(|o| matches!(o, RenterOutput::Event(RenterEvent::Failed { .. }))));
}

#[test]
fn a_lost_grant_is_recovered_by_asking_the_provider() {
    let (mut p, g) = provider(1, false);
    let mut r = RenterEngine::new(
        key(1),
        RenterConfig { network: NET.into(), receipt_grace_ms: 60_000, status_retry_ms: 1000 },
    );
    let ask = one_gpu_ask(&g, 4);
    let outs = r.handle(RenterInput::Lease(ask), NOW).unwrap();
    let RenterOutput::Send { lease_id, rpc: LeaseRpc::Request(req), .. } = &outs[1] else { panic!() };
    // The provider grants, but the answer never arrives.
    let pout = p.handle(ProviderInput::Request { token: 0, from: id_of(&key(1)), bytes: &req.0 }, NOW);
    assert!(matches!(reply_of(&pout), LeaseRpcReply::Grant(_)));
    let outs =
        r.handle(RenterInput::SendFailed { lease_id: *lease_id, error: "timeout".into() }, NOW).unwrap();
    assert_eq!(
        outs,
        vec![RenterOutput::Send {
            provider: id_of(&key(100)),
            lease_id: *lease_id,
            rpc: LeaseRpc::Status(*lease_id)
        }]
    );
    let ev = exchange(&mut r, &mut p, outs, NOW);
    assert_eq!(ev, vec![RenterEvent::Granted(*lease_id)]);
    // A second lost answer after that is a failure, not an endless retry.
    let ask2 = one_gpu_ask(&g, 5);
    let outs = r.handle(RenterInput::Lease(ask2), NOW).unwrap();
    let RenterOutput::Persist(l2) = &outs[0] else { panic!() };
    let id2 = l2.lease_id;
    r.handle(RenterInput::SendFailed { lease_id: id2, error: "timeout".into() }, NOW).unwrap();
    let out = r.handle(RenterInput::SendFailed { lease_id: id2, error: "timeout".into() }, NOW).unwrap();
    assert!(out.iter().any(|o| matches!(o, RenterOutput::Event(RenterEvent::Failed { .. }))));
}

fn renter_engine() -> RenterEngine {
    RenterEngine::new(
        key(1),
        RenterConfig { network: NET.into(), receipt_grace_ms: 60_000, status_retry_ms: 1000 },
    )
}

/// Loses the request of a new lease, lets the renter ask `status`, and returns the lease id,
/// the request's envelope and what the renter does on the provider's answer.
fn lose_request_then_ask_status(
    r: &mut RenterEngine,
    p: &mut ProviderEngine,
    ask: LeaseAsk,
    provider_saw_it: bool,
) -> (LeaseId, Bytes, Vec<RenterOutput>) {
    let outs = r.handle(RenterInput::Lease(ask), NOW).unwrap();
    let RenterOutput::Send { lease_id, rpc: LeaseRpc::Request(req), .. } = outs[1].clone() else { panic!() };
    if provider_saw_it {
        p.handle(ProviderInput::Request { token: 0, from: id_of(&key(1)), bytes: &req.0 }, NOW);
    }
    let error = "connection closed".to_string();
    let outs = r.handle(RenterInput::SendFailed { lease_id, error }, NOW).unwrap();
    assert_eq!(
        outs,
        vec![RenterOutput::Send { provider: id_of(&key(100)), lease_id, rpc: LeaseRpc::Status(lease_id) }]
    );
    let pout = p.handle(ProviderInput::Status { token: 0, from: id_of(&key(1)), lease_id }, NOW);
    assert_eq!(reply_of(&pout), &LeaseRpcReply::Unknown);
    let outs = r.handle(RenterInput::Reply { lease_id, reply: LeaseRpcReply::Unknown }, NOW).unwrap();
    (lease_id, req, outs)
}

/// A request sent on a connection that was closing never reaches the provider; the status
/// question that follows gets `unknown`, and the same request goes once more.
#[test]
fn a_request_that_never_arrived_is_sent_once_more_and_granted() {
    let (mut p, g) = provider(1, false);
    let mut r = renter_engine();
    let (lease_id, req, outs) = lose_request_then_ask_status(&mut r, &mut p, one_gpu_ask(&g, 6), false);
    let again = RenterOutput::Send { provider: id_of(&key(100)), lease_id, rpc: LeaseRpc::Request(req) };
    assert_eq!(outs, vec![again]);
    assert_eq!(exchange(&mut r, &mut p, outs, NOW), vec![RenterEvent::Granted(lease_id)]);
    assert_eq!(r.lease(&lease_id).unwrap().state, LeaseState::Active);
}

/// The provider refused the first copy and the answer was lost: the copy is refused as a
/// replay, and the renter says the first answer was lost instead of reporting a replay.
#[test]
fn a_second_copy_refused_as_a_replay_fails_saying_the_first_answer_was_lost() {
    let (mut p, g) = provider(1, false);
    let mut r = renter_engine();
    let ask = LeaseAsk { gpus: 2, ..one_gpu_ask(&g, 7) };
    let (lease_id, _, outs) = lose_request_then_ask_status(&mut r, &mut p, ask, true);
    let events = exchange(&mut r, &mut p, outs, NOW);
    let [RenterEvent::Failed { lease_id: failed, why }] = &events[..] else { panic!("{events:?}") };
    assert_eq!(*failed, lease_id);
    assert!(why.contains("already received this request and its answer was lost"), "{why}");
    assert_eq!(r.lease(&lease_id).unwrap().state, LeaseState::Failed);
}

/// Only one copy: when it is lost too, the lease fails rather than retrying forever.
#[test]
fn a_lost_second_copy_fails_the_lease() {
    let (mut p, g) = provider(1, false);
    let mut r = renter_engine();
    let (lease_id, _, outs) = lose_request_then_ask_status(&mut r, &mut p, one_gpu_ask(&g, 8), false);
    assert!(matches!(&outs[..], [RenterOutput::Send { rpc: LeaseRpc::Request(_), .. }]), "{outs:?}");
    let outs =
        r.handle(RenterInput::SendFailed { lease_id, error: "connection closed".into() }, NOW).unwrap();
    assert!(outs.iter().all(|o| !matches!(o, RenterOutput::Send { .. })), "{outs:?}");
    assert!(outs.iter().any(|o| matches!(o, RenterOutput::Event(RenterEvent::Failed { .. }))), "{outs:?}");
}

/// A renter's grant record need not reach the disk (only its request must): after a crash
/// the restored `Requested` record is asked about until the provider answers, across any
/// number of failed attempts, and gives up only once no lease made from it could still run.
#[test]
fn a_restored_request_is_asked_about_until_the_provider_answers_or_no_lease_could_run() {
    let (mut p, g) = provider(1, false);
    let config = RenterConfig { network: NET.into(), receipt_grace_ms: 60_000, status_retry_ms: 1000 };
    let mut r = RenterEngine::new(key(1), config.clone());
    let ask = |nonce| one_gpu_ask(&g, nonce);
    // Lease 1 is granted and answered; the renter then crashes with only its request on disk.
    let outs = r.handle(RenterInput::Lease(ask(7)), NOW).unwrap();
    let RenterOutput::Persist(on_disk) = outs[0].clone() else { panic!("the request is persisted first") };
    assert_eq!(on_disk.state, LeaseState::Requested);
    let events = exchange(&mut r, &mut p, outs, NOW);
    assert_eq!(events, vec![RenterEvent::Granted(on_disk.lease_id)]);
    let granted = r.lease(&on_disk.lease_id).unwrap().clone();

    // Restart with the request only: the provider is unreachable three times in a row; the
    // engine keeps asking (a live request would have failed after the second).
    let mut r = RenterEngine::new(key(1), config.clone());
    let id = on_disk.lease_id;
    let outs = r.handle(RenterInput::Restore(vec![on_disk.clone()]), NOW.plus_secs(5)).unwrap();
    assert_eq!(outs, outs_status(id));
    let mut now = NOW.plus_secs(5);
    for _ in 0..3 {
        let outs =
            r.handle(RenterInput::SendFailed { lease_id: id, error: "unreachable".into() }, now).unwrap();
        assert_eq!(outs, vec![RenterOutput::ScheduleTimer { lease_id: id, at: now.plus_millis(1000) }]);
        now = now.plus_millis(1000);
        let outs = r.handle(RenterInput::Timer { lease_id: id }, now).unwrap();
        assert_eq!(outs, outs_status(id));
    }
    // Then it answers: the same grant, so the same lease as before the crash.
    let events = exchange(&mut r, &mut p, outs_status(id), now);
    assert_eq!(events, vec![RenterEvent::Granted(id)]);
    let back = r.lease(&id).unwrap();
    assert_eq!(
        (back.state, &back.grant, &back.gpu_uuids, back.end),
        (LeaseState::Active, &granted.grant, &granted.gpu_uuids, granted.end)
    );
    // Once answered, a later failure to reach the provider is not a reason to retry forever.
    let outs = r.handle(RenterInput::Timer { lease_id: id }, now).unwrap();
    assert!(outs.iter().all(|o| !matches!(o, RenterOutput::Send { rpc: LeaseRpc::Status(_), .. })));

    // A second request restored while its provider stays unreachable: still asked about just
    // before its latest possible end (request time + duration + replay window + grace), failed
    // at it.
    let mut r = RenterEngine::new(key(1), config.clone());
    let outs = r.handle(RenterInput::Lease(ask(8)), NOW).unwrap();
    let RenterOutput::Persist(req2) = outs[0].clone() else { panic!() };
    let mut r = RenterEngine::new(key(1), config);
    r.handle(RenterInput::Restore(vec![req2.clone()]), NOW).unwrap();
    let last = NOW.plus_secs(600).plus_millis(lease::REQUEST_MAX_AGE_MS + 60_000);
    let before = Timestamp(last.0 - 1);
    let outs = r
        .handle(RenterInput::SendFailed { lease_id: req2.lease_id, error: "unreachable".into() }, before)
        .unwrap();
    assert!(matches!(outs[..], [RenterOutput::ScheduleTimer { .. }]), "{outs:?}");
    let outs = r
        .handle(RenterInput::SendFailed { lease_id: req2.lease_id, error: "unreachable".into() }, last)
        .unwrap();
    assert!(outs.iter().any(|o| matches!(o, RenterOutput::Event(RenterEvent::Failed { .. }))), "{outs:?}");
    assert_eq!(r.lease(&req2.lease_id).unwrap().state, LeaseState::Failed);
}

/// The renter's ask to the provider (key 100) about what became of lease `id`.
fn outs_status(id: LeaseId) -> Vec<RenterOutput> {
    vec![RenterOutput::Send { provider: id_of(&key(100)), lease_id: id, rpc: LeaseRpc::Status(id) }]
}

/// A granted lease (one GPU of `g`, 600 s) between a renter engine and `p`.
fn granted_lease(r: &mut RenterEngine, p: &mut ProviderEngine, g: &GpuGroup, nonce: u8) -> LeaseId {
    let outs = r.handle(RenterInput::Lease(one_gpu_ask(g, nonce)), NOW).unwrap();
    let RenterOutput::Persist(l) = &outs[0] else { panic!("{outs:?}") };
    let lease_id = l.lease_id;
    assert_eq!(exchange(r, p, outs, NOW), vec![RenterEvent::Granted(lease_id)]);
    lease_id
}

/// The provider's receipt for releasing `lease_id` at `at`, as sent.
fn receipt_of_release(
    r: &mut RenterEngine,
    p: &mut ProviderEngine,
    lease_id: LeaseId,
    at: Timestamp,
) -> Bytes {
    let outs = r.handle(RenterInput::Release { lease_id }, at).unwrap();
    let [RenterOutput::Send { rpc: LeaseRpc::Release(b), .. }] = &outs[..] else { panic!("{outs:?}") };
    let pout = p.handle(ProviderInput::Release { token: 0, from: id_of(&key(1)), bytes: &b.0 }, at);
    let LeaseRpcReply::Receipt(receipt) = reply_of(&pout) else { panic!("{pout:?}") };
    receipt.clone()
}

/// A receipt settles the lease as granted. One signed by the provider that charges another
/// price, names more GPUs, or runs past the granted end (its amount always matching its own
/// figures) is refused, and the lease stays active; the provider's true receipt then ends it.
#[test]
fn a_receipt_that_does_not_settle_the_lease_as_granted_is_refused() {
    let (mut p, g) = provider(2, false);
    let mut r = renter_engine();
    let lease_id = granted_lease(&mut r, &mut p, &g, 20);
    let at = NOW.plus_millis(60_000);
    let genuine = receipt_of_release(&mut r, &mut p, lease_id, at);
    let body = envelope::open::<UsageReceipt>(&genuine.0).unwrap().into_body();
    let forge = |f: &dyn Fn(&mut UsageReceipt)| {
        let mut b = body.clone();
        f(&mut b);
        b.amount = b.price.cost(b.gpu_uuids.len() as u32, b.end.millis_since(b.start));
        Bytes(envelope::seal(&key(100), &b))
    };
    let forged: Vec<(&str, Bytes)> = vec![
        ("ten times the price", forge(&|b| b.price = Price(b.price.0 * 10))),
        ("a GPU it never granted", forge(&|b| b.gpu_uuids.push("GPU-1".into()))),
        ("past the granted end", forge(&|b| b.end = b.end.plus_millis(3_600_000))),
        ("before the granted start", forge(&|b| b.start = Timestamp(b.start.0 - 1))),
        ("another offer", forge(&|b| b.offer_id = OfferId::from_bytes([7; 8]))),
    ];
    for (what, receipt) in forged {
        let out =
            r.handle(RenterInput::Reply { lease_id, reply: LeaseRpcReply::Receipt(receipt) }, at).unwrap();
        assert!(matches!(&out[..], [RenterOutput::Event(RenterEvent::BadReply { .. })]), "{what}: {out:?}");
        assert_eq!(r.lease(&lease_id).unwrap().state, LeaseState::Active, "{what}");
    }
    let out = r.handle(RenterInput::Reply { lease_id, reply: LeaseRpcReply::Receipt(genuine) }, at).unwrap();
    assert!(out.contains(&RenterOutput::Event(RenterEvent::Ended { lease_id, state: LeaseState::Released })));
}

/// The grant is lost and the lease has ended by the time the renter asks: the receipt is the
/// request's answer (the lease ended, not failed). A receipt that does not match fails the
/// request instead of leaving it waiting for an answer that will not come.
#[test]
fn a_request_answered_by_a_receipt_ends_and_a_bad_receipt_fails_it() {
    let (mut p, g) = provider(2, false);
    let mut r = renter_engine();
    let outs = r.handle(RenterInput::Lease(one_gpu_ask(&g, 21)), NOW).unwrap();
    let RenterOutput::Send { lease_id, rpc: LeaseRpc::Request(req), .. } = outs[1].clone() else { panic!() };
    p.handle(ProviderInput::Request { token: 0, from: id_of(&key(1)), bytes: &req.0 }, NOW); // answer lost
    let later = NOW.plus_millis(700_000);
    p.handle(ProviderInput::Timer { lease_id }, later);
    let outs = r.handle(RenterInput::SendFailed { lease_id, error: "timeout".into() }, later).unwrap();
    assert_eq!(
        exchange(&mut r, &mut p, outs, later),
        vec![RenterEvent::Ended { lease_id, state: LeaseState::Expired }]
    );
    assert!(r.lease(&lease_id).unwrap().receipt.is_some());

    // Another request; the provider answers it with a receipt that is not for it.
    let outs = r.handle(RenterInput::Lease(one_gpu_ask(&g, 22)), NOW).unwrap();
    let RenterOutput::Send { lease_id: second, .. } = outs[1].clone() else { panic!() };
    let other = r.lease(&lease_id).unwrap().receipt.clone().unwrap();
    let out =
        r.handle(RenterInput::Reply { lease_id: second, reply: LeaseRpcReply::Receipt(other) }, NOW).unwrap();
    assert!(out.iter().any(|o| matches!(o, RenterOutput::Event(RenterEvent::Failed { .. }))), "{out:?}");
    assert_eq!(r.lease(&second).unwrap().state, LeaseState::Failed);
}

/// A renter that was down from before a lease's end until past the receipt grace still asks
/// the provider for the receipt once before it records the lease as ended without one.
#[test]
fn a_renter_down_through_the_grace_period_asks_for_the_receipt_before_giving_up() {
    let (mut p, g) = provider(1, false);
    let mut r = renter_engine();
    let lease_id = granted_lease(&mut r, &mut p, &g, 23);
    let stored = r.lease(&lease_id).unwrap().clone();
    let end = stored.end.unwrap();
    let mut restarted = renter_engine();
    restarted.handle(RenterInput::Restore(vec![stored]), NOW).unwrap();
    let long_after = end.plus_millis(3_600_000); // far past the 60 s grace
    p.handle(ProviderInput::Timer { lease_id }, end);
    let outs = restarted.handle(RenterInput::Timer { lease_id }, long_after).unwrap();
    assert_eq!(
        outs,
        vec![RenterOutput::Send { provider: id_of(&key(100)), lease_id, rpc: LeaseRpc::Status(lease_id) }]
    );
    let events = exchange(&mut restarted, &mut p, outs, long_after);
    assert_eq!(events, vec![RenterEvent::Ended { lease_id, state: LeaseState::Expired }]);
    assert!(restarted.lease(&lease_id).unwrap().receipt.is_some(), "the receipt was kept");

    // Asked once and still no receipt: the next check past the grace gives up.
    let lease_id = granted_lease(&mut restarted, &mut p, &g, 24);
    let end = restarted.lease(&lease_id).unwrap().end.unwrap();
    let late = end.plus_millis(3_600_000);
    let outs = restarted.handle(RenterInput::Timer { lease_id }, late).unwrap();
    assert!(matches!(&outs[..], [RenterOutput::Send { rpc: LeaseRpc::Status(_), .. }]), "{outs:?}");
    restarted.handle(RenterInput::SendFailed { lease_id, error: "unreachable".into() }, late).unwrap();
    assert_eq!(restarted.lease(&lease_id).unwrap().state, LeaseState::Expired);
    assert!(restarted.lease(&lease_id).unwrap().receipt.is_none());
}
