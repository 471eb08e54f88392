//! The lease task against a real store: what the node does when a write the provider engine
//! asked for fails.

use super::*;
use crate::config::NodeConfig;
use gpumesh_protocol::bytes::Nonce;
use gpumesh_protocol::lease::messages::{LeaseReject, LeaseRequest};
use gpumesh_protocol::wire::{self, LeaseRpcReply};
use gpumesh_protocol::{PROTOCOL_VERSION, envelope};
use std::collections::BTreeMap;

struct Rig {
    task: LeaseTask,
    swarm: mpsc::Receiver<Command>,
    store: Store,
    offer: gpumesh_protocol::OfferId,
    price: Price,
    _dir: tempfile::TempDir,
    _commands: mpsc::Sender<LeaseCommand>,
}

/// A provider's lease task with one simulated GPU on offer and a start hook configured (the
/// hook program is never waited for: the test feeds the hook's end itself).
async fn provider_with_a_start_hook() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig::default();
    config.hooks.on_lease_start = Some(dir.path().join("no-such-hook"));
    let settings = Arc::new(config.resolve().unwrap());
    let key = SigningKey::from_bytes(&[7; 32]);
    let store = Store::open(&dir.path().join("db")).unwrap();
    let gpus = crate::inventory::simulate("H100-SXM-80GB:1", &[7; 32]).unwrap();
    let price = Price(2_000_000);
    let groups: Vec<OfferedGroup> = crate::inventory::group(&gpus)
        .into_iter()
        .map(|(spec, units)| OfferedGroup { spec, units, price })
        .collect();
    let (swarm_tx, swarm) = mpsc::channel(64);
    let (commands_tx, commands) = mpsc::channel(8);
    let task = LeaseTask::new(LeaseTaskParts {
        key,
        settings: settings.clone(),
        store: store.clone(),
        metrics: Arc::new(Metrics::new()),
        groups,
        host: gpumesh_protocol::HostSpec {
            cpu_cores: 8,
            ram_mib: 65536,
            disk_gib: 100,
            region: "test".into(),
        },
        gpus,
        swarm: swarm_tx,
        commands,
    });
    let offer = task.advertiser.engine_groups()[0].offer_id;
    let mut rig = Rig { task, swarm, store, offer, price, _dir: dir, _commands: commands_tx };
    let groups = rig.task.advertiser.engine_groups();
    rig.task.provider_input(ProviderInput::SetGroups(groups), None).await;
    rig
}

/// Every lease reply handed to the swarm so far, by token.
fn replies_sent(swarm: &mut mpsc::Receiver<Command>) -> BTreeMap<u64, LeaseRpcReply> {
    let mut sent = BTreeMap::new();
    while let Ok(c) = swarm.try_recv() {
        if let Command::RespondLease { token, bytes } = c {
            let reply = wire::decode::<LeaseRpcReply>(&bytes, usize::MAX).unwrap();
            assert!(sent.insert(token, reply).is_none(), "token {token} answered twice");
        }
    }
    sent
}

/// Sends the rig's provider a valid request for its one GPU on stream `token`; returns the
/// renter's id and the lease as stored (starting: the start hook is configured).
async fn request_the_gpu(
    rig: &mut Rig,
    nonce: u8,
    token: u64,
) -> (NodeId, gpumesh_protocol::lease::ProviderLease) {
    let renter = SigningKey::from_bytes(&[9; 32]);
    let renter_id = NodeId::from_bytes(renter.verifying_key().to_bytes());
    let request = envelope::seal(
        &renter,
        &LeaseRequest {
            v: PROTOCOL_VERSION,
            network: rig.task.settings.network.clone(),
            renter: renter_id,
            provider: rig.task.me,
            offer_id: rig.offer,
            gpus: 1,
            duration_s: 600,
            price: rig.price,
            max_price: rig.price,
            nonce: Nonce([nonce; 16]),
            issued_at: crate::clock::now(),
            ssh_key: None,
        },
    );
    rig.task
        .provider_input(ProviderInput::Request { token, from: renter_id, bytes: &request }, Some(token))
        .await;
    let id = LeaseId::derive(&rig.task.me, &renter_id, &[nonce; 16]);
    let (stored, _) = rig.store.provider_leases();
    let lease = stored.into_iter().find(|l| l.lease_id == id).expect("the lease is stored");
    assert_eq!(lease.state, gpumesh_protocol::lease::LeaseState::Starting);
    (renter_id, lease)
}

/// The grant's write fails after the start hook succeeded (here: the store finds the GPU
/// reserved under another lease). No grant may leave, and the request and the renter's
/// held status question must each still get an answer, a `provider-error` reject, instead of
/// waiting for the renter's timeout.
#[tokio::test]
async fn a_grant_whose_write_fails_after_the_start_hook_is_answered_with_a_reject() {
    let mut rig = provider_with_a_start_hook().await;
    let (renter_id, lease) = request_the_gpu(&mut rig, 1, 1).await;
    let lease = &lease;
    rig.task
        .provider_input(
            ProviderInput::Status { token: 2, from: renter_id, lease_id: lease.lease_id },
            Some(2),
        )
        .await;
    assert!(replies_sent(&mut rig.swarm).is_empty(), "nothing is answered while the hook runs");

    rig.store.reserve_gpu_for_test(&lease.gpus[0].uuid, &LeaseId::from_bytes([0xee; 8]));
    rig.task
        .provider_input(ProviderInput::HookDone { lease_id: lease.lease_id, result: Ok("{}".into()) }, None)
        .await;

    let sent = replies_sent(&mut rig.swarm);
    assert_eq!(sent.keys().copied().collect::<Vec<_>>(), vec![1, 2], "{sent:?}");
    for (token, reply) in sent {
        let LeaseRpcReply::Reject(b) = reply else { panic!("token {token} got {reply:?}, not a reject") };
        let reject = envelope::open::<LeaseReject>(&b.0).unwrap();
        assert_eq!(reject.reason, RejectReason::ProviderError, "token {token}");
    }
    let (stored, _) = rig.store.provider_leases();
    assert_eq!(stored[0].state, gpumesh_protocol::lease::LeaseState::Failed, "the lease is failed on disk");
}

/// What the lease task drops after a failed write: every reply (handed back by token) and
/// `Rejected` event (the engine rejects again, and counts that), and the failed lease's timer,
/// start hook and `Granted` event, but nothing about other leases
/// (a restore's failed write must not cost the other restored leases their expiry timers).
#[tokio::test]
async fn after_a_failed_write_only_the_failed_leases_outputs_and_the_replies_are_dropped() {
    use gpumesh_protocol::lease::provider::{ProviderEvent, ProviderOutput};
    let mut rig = provider_with_a_start_hook().await;
    let (renter, failed) = request_the_gpu(&mut rig, 1, 1).await;
    let other = LeaseId::from_bytes([1; 8]);
    let at = crate::clock::now();
    let mut queue: std::collections::VecDeque<ProviderOutput> = [
        ProviderOutput::ScheduleEnd { lease_id: failed.lease_id, at },
        ProviderOutput::RunStartHook(failed.clone()),
        ProviderOutput::Event(ProviderEvent::Granted { lease_id: failed.lease_id, renter }),
        ProviderOutput::Reply { token: 5, reply: LeaseRpcReply::Unknown },
        ProviderOutput::Event(ProviderEvent::Rejected {
            renter: Some(renter),
            reason: RejectReason::ProviderError,
            detail: "hook failed".into(),
        }),
        ProviderOutput::ScheduleEnd { lease_id: other, at },
        ProviderOutput::FreeCountChanged(rig.offer),
        ProviderOutput::Event(ProviderEvent::Granted { lease_id: other, renter }),
        ProviderOutput::Reply { token: 6, reply: LeaseRpcReply::Unknown },
    ]
    .into();
    let tokens = super::provider::drop_after_failed_write(&mut queue, failed.lease_id);
    assert_eq!(tokens, vec![5, 6]);
    assert_eq!(
        Vec::from(queue),
        vec![
            ProviderOutput::ScheduleEnd { lease_id: other, at },
            ProviderOutput::FreeCountChanged(rig.offer),
            ProviderOutput::Event(ProviderEvent::Granted { lease_id: other, renter }),
        ]
    );
}

/// The write that ends a lease fails (here: the hook failed and the failed lease's write is
/// undone), so the disk still holds the GPU for it while the engine has freed it. The next
/// lease on that GPU writes the old lease's end first and goes ahead, instead of failing with
/// the GPU "already reserved" until the node restarts.
#[tokio::test]
async fn a_reservation_left_by_an_unwritten_end_does_not_block_the_next_lease() {
    let mut rig = provider_with_a_start_hook().await;
    let (_, first) = request_the_gpu(&mut rig, 1, 1).await;
    rig.task
        .provider_input(
            ProviderInput::HookDone { lease_id: first.lease_id, result: Err("boom".into()) },
            None,
        )
        .await;
    assert_eq!(replies_sent(&mut rig.swarm).len(), 1, "the first request is rejected");
    rig.store.put_back_for_test(&first);

    let (_, second) = request_the_gpu(&mut rig, 2, 2).await;
    assert!(replies_sent(&mut rig.swarm).is_empty(), "the second request waits for its hook, not rejected");
    let gpu = second.gpus[0].uuid.clone();
    assert_eq!(rig.store.reservations(), vec![(gpu, second.lease_id.to_string())]);
    let (stored, _) = rig.store.provider_leases();
    let first_now = stored.iter().find(|l| l.lease_id == first.lease_id).expect("first lease");
    assert_eq!(first_now.state, gpumesh_protocol::lease::LeaseState::Failed, "its end is on disk now");
}

/// A renter whose request's answer was lost asks `status`; by then the lease has ended, and
/// the provider answers with its receipt. The API call waiting on the lease is told so (an
/// error: there is nothing to use) instead of waiting for good, and the receipt is kept.
#[tokio::test]
async fn a_lease_call_whose_grant_was_lost_is_answered_by_the_receipt() {
    use gpumesh_protocol::bytes::Bytes;
    use gpumesh_protocol::lease::messages::{EndReason, UsageReceipt};
    use gpumesh_protocol::{Offer, OfferId, Timestamp, Verified};
    let mut rig = provider_with_a_start_hook().await;
    let provider_key = SigningKey::from_bytes(&[8; 32]);
    let provider = NodeId::from_bytes(provider_key.verifying_key().to_bytes());
    let gpus = crate::inventory::simulate("H100-SXM-80GB:1", &[8; 32]).unwrap();
    let spec = crate::inventory::group(&gpus).remove(0).0;
    let now = crate::clock::now();
    let offer = Offer {
        v: PROTOCOL_VERSION,
        network: rig.task.settings.network.clone(),
        offer_id: OfferId::derive(&provider, &spec.group_key()),
        provider,
        seq: 1,
        issued_at: now,
        expires_at: now.plus_millis(600_000),
        gpu: spec,
        gpu_total: 1,
        gpu_free: 1,
        host: gpumesh_protocol::HostSpec {
            cpu_cores: 8,
            ram_mib: 65536,
            disk_gib: 100,
            region: "test".into(),
        },
        price: rig.price,
        min_duration_s: 60,
        max_duration_s: 3600,
        addrs: Vec::new(),
    };
    let offer = Verified::seal(&provider_key, offer);
    let params =
        LeaseParams { offer: offer.clone(), gpus: 1, duration_s: 600, max_price: None, ssh_key: None };
    let (tx, mut answer) = oneshot::channel();
    rig.task.handle_command(LeaseCommand::Lease(Box::new(params), tx)).await;
    let lease_id = loop {
        match rig.swarm.try_recv() {
            Ok(Command::SendLease { lease_id, .. }) => break lease_id,
            Ok(_) => continue,
            Err(e) => panic!("no lease request was sent: {e}"),
        }
    };
    rig.task.handle_command(LeaseCommand::Reply { lease_id, result: Err("connection closed".into()) }).await;
    assert!(
        matches!(rig.swarm.try_recv(), Ok(Command::SendLease { lease_id: id, .. }) if id == lease_id),
        "the renter asks status"
    );

    let end = Timestamp(now.0.saturating_sub(1_000));
    let start = Timestamp(end.0 - 600_000);
    let receipt = UsageReceipt {
        v: PROTOCOL_VERSION,
        network: rig.task.settings.network.clone(),
        lease_id,
        provider,
        renter: rig.task.me,
        offer_id: offer.body().offer_id,
        gpu_uuids: vec!["GPU-x".into()],
        start,
        end,
        price: rig.price,
        amount: rig.price.cost(1, end.millis_since(start)),
        ended_by: EndReason::Expired,
    };
    let reply = LeaseRpcReply::Receipt(Bytes(envelope::seal(&provider_key, &receipt)));
    rig.task.handle_command(LeaseCommand::Reply { lease_id, result: Ok(wire::encode(&reply)) }).await;
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), &mut answer)
        .await
        .expect("the lease call is answered")
        .expect("the task kept the waiter");
    let Err(LeaseError::Failed(why)) = answer else { panic!("not told it ended: {answer:?}") };
    assert!(why.contains("already ended (expired)"), "{why}");
    let stored = rig.task.renter.lease(&lease_id).expect("the lease is kept");
    assert!(stored.receipt.is_some(), "with its receipt");
}
