//! A paused leader (SIGSTOP) costs a client call about an election, not its whole deadline:
//! calls with a 3 s deadline keep succeeding while the leader of a PD group, or of a
//! config-file cluster, is paused for 3 s, and what they return stays in order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdb_client::{Client, Options, PdClient};
use rdb_tests::cluster::{quick_options, TestCluster};

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// How long the leader stays paused, and the callers' deadline.
const PAUSE: Duration = Duration::from_secs(3);
const DEADLINE: Duration = Duration::from_secs(3);

/// Concurrent callers.
const CALLERS: usize = 4;

/// Client options: a deadline as long as the pause.
fn options() -> Options {
    Options {
        deadline: DEADLINE,
        ..quick_options()
    }
}

/// One finished call: when it began and ended, and whether it succeeded.
#[derive(Debug, Clone, Copy)]
struct Call {
    invoke: Instant,
    complete: Instant,
    ok: bool,
}

/// Calls recorded by every caller, shared with the test.
#[derive(Clone, Default)]
struct Record(Arc<Mutex<Vec<Call>>>);

impl Record {
    fn push(&self, call: Call) {
        self.0.lock().unwrap().push(call);
    }

    fn calls(&self) -> Vec<Call> {
        self.0.lock().unwrap().clone()
    }

    fn ok_since(&self, t: Instant) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.ok && c.invoke >= t)
            .count()
    }

    /// Waits until `n` calls begun at or after `t` succeeded; panics naming `what` after 30 s.
    async fn wait_ok_since(&self, t: Instant, n: usize, what: &str) {
        let rec = self.clone();
        TestCluster::wait_until(what, SECS(30), || {
            let got = rec.ok_since(t);
            async move { got >= n }
        })
        .await;
    }
}

/// Pauses node `leader` for [`PAUSE`] while the callers run, then checks what the calls that
/// overlapped the pause did: most succeeded, and none took much longer than its deadline.
async fn pause_and_check(c: &mut TestCluster, leader: u64, rec: &Record, stop: &AtomicBool) {
    rec.wait_ok_since(Instant::now(), 20, "calls before the pause")
        .await;
    let paused = Instant::now();
    c.pause(leader);
    // The fault itself lasts this long; nothing is waited for here.
    tokio::time::sleep(PAUSE).await;
    c.resume(leader);
    let resumed = Instant::now();
    rec.wait_ok_since(resumed, 20, "calls after the pause")
        .await;
    stop.store(true, Ordering::Relaxed);

    let calls = rec.calls();
    let overlapping: Vec<&Call> = calls
        .iter()
        .filter(|c| c.invoke < resumed && c.complete > paused)
        .collect();
    let ok = overlapping.iter().filter(|c| c.ok).count();
    let first_ok = overlapping
        .iter()
        .filter(|c| c.ok && c.invoke >= paused)
        .map(|c| c.complete.duration_since(paused))
        .min();
    let summary = format!(
        "{ok} of {} calls during the pause succeeded; first success begun in the pause ended \
         {first_ok:?} after it began",
        overlapping.len()
    );
    eprintln!("{summary}");
    // Each call waits about an election (1-2 s) for a new leader; one that had to wait for
    // the whole pause would fail at its 3 s deadline, as all of them did before.
    assert!(
        ok >= CALLERS && ok * 4 >= overlapping.len() * 3,
        "{summary}"
    );
    assert!(
        first_ok.is_some_and(|t| t < PAUSE),
        "no call found the new leader before the pause ended: {summary}"
    );
    for call in &calls {
        let took = call.complete.duration_since(call.invoke);
        assert!(took < DEADLINE + SECS(1), "a call took {took:?}: {summary}");
    }
}

/// Timestamps from a 3-node PD group whose leader is paused for 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_keep_coming_in_order_while_the_pd_leader_is_paused() {
    let mut c = TestCluster::start_pd(3, "");
    let pd = PdClient::with_options(c.endpoints(), options()).expect("client");
    TestCluster::wait_until("a first timestamp", SECS(30), || {
        let pd = pd.clone();
        async move { pd.timestamp().await.is_ok() }
    })
    .await;
    let leader_addr = pd.leader().expect("the client knows the leader");
    let leader = c
        .nodes
        .iter()
        .find(|n| n.client_addr == leader_addr)
        .map(|n| n.id)
        .expect("the leader is a node of the group");

    let rec = Record::default();
    let stop = Arc::new(AtomicBool::new(false));
    // Every answered timestamp with its call's times, to check the order afterwards.
    let stamps = Arc::new(Mutex::new(Vec::<(Instant, Instant, u64)>::new()));
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (pd, rec, stop, stamps) = (pd.clone(), rec.clone(), stop.clone(), stamps.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let invoke = Instant::now();
                    let r = pd.timestamp().await;
                    let complete = Instant::now();
                    if let Ok(ts) = &r {
                        stamps.lock().unwrap().push((invoke, complete, ts.as_u64()));
                    }
                    rec.push(Call {
                        invoke,
                        complete,
                        ok: r.is_ok(),
                    });
                }
            })
        })
        .collect();
    pause_and_check(&mut c, leader, &rec, &stop).await;
    for t in callers {
        t.await.expect("caller");
    }

    // No timestamp twice, and a call begun after another ended got a larger one.
    let mut stamps = stamps.lock().unwrap().clone();
    stamps.sort_by_key(|s| s.2);
    assert!(
        stamps.windows(2).all(|w| w[0].2 < w[1].2),
        "a timestamp was handed out twice"
    );
    let mut by_complete = stamps.clone();
    by_complete.sort_by_key(|s| s.1);
    stamps.sort_by_key(|s| s.0);
    let (mut done, mut highest) = (0, 0u64);
    for &(invoke, _, ts) in &stamps {
        while done < by_complete.len() && by_complete[done].1 < invoke {
            highest = highest.max(by_complete[done].2);
            done += 1;
        }
        assert!(ts > highest, "a timestamp went back: {ts} after {highest}");
    }
}

/// Writes and linearizable reads against a 3-node cluster whose leader is paused for 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_reads_keep_working_while_the_leader_is_paused() {
    let mut c = TestCluster::start(3);
    let leader = c.wait_leader(SECS(10)).await;
    let client = Client::with_options(c.endpoints(), options()).expect("client");
    TestCluster::wait_until("a first write", SECS(30), || {
        let client = client.clone();
        async move { client.put("warm", "up").await.is_ok() }
    })
    .await;

    let rec = Record::default();
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..CALLERS)
        .map(|i| {
            let (client, rec, stop) = (client.clone(), rec.clone(), stop.clone());
            tokio::spawn(async move {
                // Each caller writes its own key with rising values and reads it back: a read
                // returns the latest acknowledged value or a later one it may have applied.
                let key = format!("caller/{i}");
                let (mut acked, mut tried) = (0u64, 0u64);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let invoke = Instant::now();
                    let r = client.put(key.clone(), n.to_string()).await;
                    let ok = r.is_ok();
                    match r {
                        Ok(_) => (acked, tried) = (n, n),
                        Err(rdb_client::Error::Indeterminate(_)) => tried = n,
                        Err(_) => {}
                    }
                    rec.push(Call {
                        invoke,
                        complete: Instant::now(),
                        ok,
                    });
                    let invoke = Instant::now();
                    let r = client.get(key.clone()).await;
                    if let Ok(v) = &r {
                        let v: u64 = v
                            .as_deref()
                            .map(|v| String::from_utf8_lossy(v).parse().expect("a number"))
                            .unwrap_or(0);
                        assert!(
                            acked <= v && v <= tried,
                            "{key}: read {v} after {acked} was acknowledged and {tried} tried"
                        );
                    }
                    rec.push(Call {
                        invoke,
                        complete: Instant::now(),
                        ok: r.is_ok(),
                    });
                }
            })
        })
        .collect();
    pause_and_check(&mut c, leader, &rec, &stop).await;
    for t in callers {
        t.await.expect("caller");
    }
}
