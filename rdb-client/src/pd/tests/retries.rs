//! Finding PD's leader and retrying: leader hints followed and cached, the next endpoint on
//! a refusal without a hint or a transport failure, UNAVAILABLE and INDETERMINATE retried
//! until the deadline, a silent leader left after a turn, and members' addresses learnt as
//! endpoints.

use std::sync::atomic::{AtomicU32, Ordering};

use tokio::time::Instant;

use super::*;

#[tokio::test]
async fn not_leader_with_a_hint_is_followed_and_the_leader_cached() {
    let leader = leader_fake();
    let leader_addr = serve(leader.clone()).await;
    let follower = Arc::new(Fake {
        not_leader: Some(leader_addr.clone()),
        ..Fake::default()
    });
    let follower_addr = serve(follower.clone()).await;
    let pd = PdClient::with_options([follower_addr.clone()], opts()).unwrap();

    let first = pd.alloc_ids(10).await.unwrap();
    assert_eq!(first, 1);
    assert_eq!(pd.leader().as_deref(), Some(leader_addr.as_str()));
    assert!(pd.endpoints().contains(&leader_addr), "the hint was added");
    assert_eq!(follower.calls.load(Ordering::SeqCst), 1);

    // The next call goes to the cached leader directly.
    assert_eq!(pd.alloc_ids(1).await.unwrap(), 11);
    assert_eq!(follower.calls.load(Ordering::SeqCst), 1);
    assert_eq!(leader.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn not_leader_without_a_hint_tries_the_next_endpoint() {
    let leader = leader_fake();
    let leader_addr = serve(leader.clone()).await;
    let follower = Arc::new(Fake {
        not_leader: Some(String::new()),
        ..Fake::default()
    });
    let follower_addr = serve(follower.clone()).await;
    let pd = PdClient::with_options([follower_addr, leader_addr.clone()], opts()).unwrap();
    for _ in 0..3 {
        assert!(!pd.is_bootstrapped().await.unwrap());
    }
    assert_eq!(pd.leader().as_deref(), Some(leader_addr.as_str()));
    assert!(follower.calls.load(Ordering::SeqCst) <= 1);
}

#[tokio::test]
async fn unavailable_and_indeterminate_are_retried_until_success() {
    let fake = Arc::new(Fake {
        unavailable_for: AtomicU32::new(3),
        indeterminate_for: AtomicU32::new(2),
        ..Fake::default()
    });
    let pd = PdClient::with_options([serve(fake.clone()).await], opts()).unwrap();
    pd.put_store(
        Store {
            id: 4,
            address: "127.0.0.1:2379".into(),
            ..Default::default()
        },
        7,
    )
    .await
    .unwrap();
    assert_eq!(
        fake.calls.load(Ordering::SeqCst),
        6,
        "3 + 2 refusals, then success"
    );
    let store = pd.get_store(4).await.unwrap().unwrap();
    assert_eq!(store.address, "127.0.0.1:2379");
    assert_eq!(store.state, StoreState::Up);
}

#[tokio::test]
async fn a_transport_failure_moves_on_to_the_next_endpoint() {
    let fake = leader_fake();
    let live = serve(fake.clone()).await;
    let pd = PdClient::with_options([dead_addr(), live.clone()], opts()).unwrap();
    let (first, n) = pd.timestamps(5).await.unwrap();
    assert_eq!(n, 5);
    assert_eq!(first.physical, 1_700_000_000_000);
    assert_eq!(pd.leader().as_deref(), Some(live.as_str()));
}

#[tokio::test]
async fn the_deadline_ends_retries_with_an_error_that_says_so() {
    let fake = Arc::new(Fake {
        always_unavailable: true,
        ..Fake::default()
    });
    let pd = PdClient::with_options(
        [serve(fake.clone()).await],
        with_deadline(Duration::from_millis(300)),
    )
    .unwrap();
    let started = Instant::now();
    match pd.get_members().await {
        Err(Error::Unavailable(m)) => assert!(m.contains("deadline"), "{m}"),
        other => panic!("expected unavailable at the deadline: {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(fake.calls.load(Ordering::SeqCst) > 1, "it was retried");

    // Nobody listening: unavailable, and a write that was never sent is not indeterminate.
    let pd =
        PdClient::with_options([dead_addr()], with_deadline(Duration::from_millis(300))).unwrap();
    match pd.set_store_tombstone(3).await {
        Err(Error::Unavailable(m)) => assert!(m.contains("deadline"), "{m}"),
        other => panic!("expected unavailable at the deadline: {other:?}"),
    }
    // A timestamp waiter gets its batch's error at the deadline, with the cause.
    match pd.timestamp().await {
        Err(Error::Unavailable(m)) => {
            assert!(m.contains("deadline") && m.contains("no PD leader"), "{m}")
        }
        other => panic!("expected unavailable at the deadline: {other:?}"),
    }
}

#[tokio::test]
async fn a_write_still_indeterminate_at_the_deadline_is_reported_so() {
    let fake = Arc::new(Fake {
        indeterminate_for: AtomicU32::new(u32::MAX),
        ..Fake::default()
    });
    let pd = PdClient::with_options(
        [serve(fake).await],
        with_deadline(Duration::from_millis(200)),
    )
    .unwrap();
    match pd.bootstrap(Store::default(), Region::default(), 7).await {
        Err(Error::Indeterminate(m)) => assert!(m.contains("deadline"), "{m}"),
        other => panic!("expected indeterminate: {other:?}"),
    }
}

#[tokio::test]
async fn a_silent_pd_leader_costs_a_turn_not_the_attempt_timeout() {
    // The first endpoint takes requests and never answers them, as a paused leader does.
    let silent = leader_fake();
    silent.tso_hold.store(true, Ordering::SeqCst);
    let live = leader_fake();
    let endpoints = [serve(silent.clone()).await, serve(live.clone()).await];
    let timing = Options {
        deadline: Duration::from_secs(3),
        attempt_timeout: Duration::from_secs(2),
        election_timeout: Duration::from_millis(300),
        ..opts()
    };
    let pd = PdClient::with_options(endpoints.clone(), timing).unwrap();
    let started = Instant::now();
    let ts = pd.timestamp().await.unwrap();
    let took = started.elapsed();
    assert_eq!(ts.physical, 1_700_000_000_000);
    // A 300 ms turn, then the other node; a full attempt would be 2 s.
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(silent.calls.load(Ordering::SeqCst), 1);
    assert_eq!(pd.leader().as_deref(), Some(endpoints[1].as_str()));
}

#[tokio::test]
async fn members_and_their_leader() {
    let member = |id: u64| pb::Member {
        id,
        client_addr: format!("10.0.0.{id}:2379"),
        peer_addr: format!("10.0.0.{id}:2380"),
        ..Default::default()
    };
    let fake = Arc::new(Fake {
        id: 2,
        members: vec![member(1), member(2), member(3)],
        ..Fake::default()
    });
    let pd = PdClient::with_options([serve(fake).await], opts()).unwrap();
    let m = pd.get_members().await.unwrap();
    assert_eq!(m.members.len(), 3);
    assert_eq!(m.leader.unwrap().client_addr, "10.0.0.2:2379");
    // The members' addresses are endpoints from now on (a PD node added since the client
    // was made is tried too).
    let known = pd.endpoints();
    for id in 1..=3 {
        assert!(known.contains(&format!("10.0.0.{id}:2379")), "{known:?}");
    }
}
