//! The renter's lease state machine against a provider engine in memory: the lifecycle,
//! checks of the provider's grants and receipts, lost messages, restore after a crash.

mod common;
use common::lease_rig::*;
use common::*;
use gpumesh_protocol::bytes::Bytes;
use gpumesh_protocol::lease::LeaseState;
use gpumesh_protocol::lease::messages::*;
use gpumesh_protocol::lease::provider::*;
use gpumesh_protocol::lease::renter::*;
use gpumesh_protocol::wire::{LeaseRpc, LeaseRpcReply};
use gpumesh_protocol::*;

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

/// An active lease past its end whose status question brings a reply that settles nothing (a
/// receipt that does not match) is asked again later, and past the grace period ends without
/// a receipt: it never stays active for good.
#[test]
fn an_ended_lease_that_gets_a_bad_receipt_is_asked_again_and_then_given_up() {
    let (mut p, g) = provider(2, false);
    let mut r = renter_engine();
    let lease_id = granted_lease(&mut r, &mut p, &g, 25);
    let other = granted_lease(&mut r, &mut p, &g, 26);
    let end = r.lease(&lease_id).unwrap().end.unwrap();
    let wrong = receipt_of_release(&mut r, &mut p, other, NOW.plus_millis(1_000));
    let outs = r.handle(RenterInput::Timer { lease_id }, end).unwrap();
    assert!(matches!(&outs[..], [RenterOutput::Send { rpc: LeaseRpc::Status(_), .. }]), "{outs:?}");
    let outs = r.handle(RenterInput::Reply { lease_id, reply: LeaseRpcReply::Receipt(wrong) }, end).unwrap();
    let retry = end.plus_millis(1_000);
    assert!(outs.contains(&RenterOutput::ScheduleTimer { lease_id, at: retry }), "{outs:?}");
    assert_eq!(r.lease(&lease_id).unwrap().state, LeaseState::Active);
    let past_grace = end.plus_millis(61_000);
    r.handle(RenterInput::Timer { lease_id }, past_grace).unwrap();
    assert_eq!(r.lease(&lease_id).unwrap().state, LeaseState::Expired, "given up without a receipt");
}
