//! The provider's lease state machine, scenario by scenario: grants, every reject reason,
//! hooks, status questions, failed writes, release, expiry and restore after a crash. The
//! renter's side is in `lease_renter.rs`.

mod common;
use common::lease_rig::*;
use common::*;
use gpumesh_protocol::lease::LeaseState;
use gpumesh_protocol::lease::messages::*;
use gpumesh_protocol::lease::provider::*;
use gpumesh_protocol::wire::LeaseRpcReply;
use gpumesh_protocol::*;

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
