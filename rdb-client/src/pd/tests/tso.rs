//! Timestamps: concurrent callers batched into few requests, callers left over when PD gives
//! fewer, a batch driver lost with its runtime, and an answer without timestamps.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_timestamps_are_distinct_increasing_and_batched() {
    const TASKS: usize = 64;
    const CALLS: usize = 100;
    let fake = leader_fake();
    let pd = PdClient::with_options([serve(fake.clone()).await], opts()).unwrap();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let pd = pd.clone();
            tokio::spawn(async move {
                let mut got = Vec::with_capacity(CALLS);
                for _ in 0..CALLS {
                    got.push(pd.timestamp().await.unwrap().as_u64());
                }
                got
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for t in tasks {
        let got = t.await.unwrap();
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "one caller's timestamps increase"
        );
        seen.extend(got);
    }
    assert_eq!(seen.len(), TASKS * CALLS, "every timestamp is distinct");
    let requests = fake.tso_requests.load(Ordering::SeqCst) as usize;
    assert!(
        requests < TASKS * CALLS,
        "{requests} requests for {} timestamps",
        TASKS * CALLS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_left_over_when_pd_gives_fewer_timestamps_wait_for_the_next_request() {
    let fake = Arc::new(Fake {
        tso_max: Some(3),
        ..Fake::default()
    });
    let pd = PdClient::with_options([serve(fake.clone()).await], opts()).unwrap();
    let calls: Vec<_> = (0..32)
        .map(|_| {
            let pd = pd.clone();
            tokio::spawn(async move { pd.shared_timestamp().await.unwrap() })
        })
        .collect();
    let mut seen = HashSet::new();
    // Each request's range, with how many callers it went to.
    let mut ranges: std::collections::BTreeMap<(u64, u64), u64> = Default::default();
    for c in calls {
        let t = c.await.unwrap();
        let (first, last) = (t.first.as_u64(), t.last.as_u64());
        assert!(
            (first..=last).contains(&t.timestamp.as_u64()),
            "a timestamp lies in its request's range"
        );
        seen.insert(t.timestamp);
        *ranges.entry((first, last)).or_default() += 1;
    }
    assert_eq!(seen.len(), 32);
    assert!(
        fake.tso_requests.load(Ordering::SeqCst) >= 11,
        "3 per request at most"
    );
    let mut above = 0;
    for ((first, last), callers) in ranges {
        assert!(first >= above, "requests' ranges do not overlap");
        assert_eq!(
            last - first + 1,
            callers,
            "a range holds its callers' timestamps"
        );
        above = last + 1;
    }
}

/// Waits until `cond` holds; panics naming `what` after 5 s.
async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "not within 5 s: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn a_batch_driver_lost_with_its_runtime_does_not_block_later_callers() {
    let server = tokio::runtime::Runtime::new().unwrap();
    let fake = leader_fake();
    fake.tso_hold.store(true, Ordering::SeqCst);
    let addr = server.block_on(serve(fake.clone()));
    // tonic runs a channel's worker on the runtime that made it: this one outlives the test.
    let pd = {
        let _in_server = server.enter();
        PdClient::with_options([addr], opts()).unwrap()
    };

    // The driver's request hangs, then its runtime goes away under it.
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    first.block_on(async {
        let waiter = tokio::spawn({
            let pd = pd.clone();
            async move { pd.timestamp().await }
        });
        wait_for("the fake saw the Tso request", || {
            fake.calls.load(Ordering::SeqCst) >= 1
        })
        .await;
        drop(waiter);
    });
    drop(first);

    fake.tso_hold.store(false, Ordering::SeqCst);
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ts = second.block_on(pd.timestamp()).unwrap();
    assert_eq!(ts.physical, 1_700_000_000_000);
}

#[tokio::test]
async fn a_tso_answer_without_timestamps_is_an_error_not_a_timestamp() {
    let fake = Arc::new(Fake {
        tso_max: Some(0),
        ..Fake::default()
    });
    let pd = PdClient::with_options([serve(fake).await], opts()).unwrap();
    match pd.timestamp().await {
        Err(Error::Unavailable(m)) => assert!(m.contains("malformed"), "{m}"),
        other => panic!("expected an error: {other:?}"),
    }
}
