//! A clean stop (SIGTERM) ends with exit status 0 every time, for a config-file node, a PD-mode
//! store and an rdb-pd node: each is started, written to, and stopped with writes in flight, 50
//! times over, and every write acknowledged before a stop is there after the restart. A stop
//! while the process still starts exits 0 too (the signals are caught from the start).
//!
//! A stop that returned from `main` while the Raft thread or a blocking read still used
//! RocksDB aborted now and then (`pthread lock: Invalid argument`, exit 134): a loop of stops is
//! what shows it.

use std::collections::BTreeSet;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rdb_client::{Client, PdClient, ReadConsistency};
use rdb_tests::cluster::{quick_options, TestCluster};
use rdb_tests::regions::{RegionCluster, Split};

/// Start / write / stop cycles per kind of process.
const CYCLES: usize = 50;
/// Writers in flight when the stop comes.
const WRITERS: u64 = 4;
/// A stop must end well within the binary's own bound (5 s) plus process start-up slack.
const STOP_WAIT: Duration = Duration::from_secs(8);

/// A write numbered `n`; `Some(token)` once acknowledged (the key's number, or the id PD gave).
type Write = Arc<dyn Fn(u64) -> BoxFuture<'static, Option<u64>> + Send + Sync>;
/// Checks, after a restart, that what the tokens stand for survived; `Err` says what is missing.
type Survived = Arc<dyn Fn(Vec<u64>) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Runs the cycles over one process: `start` (re)starts it, `stop` sends SIGTERM and returns
/// its exit status (None: still running after `STOP_WAIT`) and its log.
async fn cycles(
    what: &str,
    mut start: impl FnMut(),
    mut stop: impl FnMut() -> (Option<ExitStatus>, String),
    write: Write,
    survived: Survived,
) {
    let mut next = 0u64;
    let mut acked_before: Vec<u64> = Vec::new();
    for cycle in 0..CYCLES {
        if cycle > 0 {
            start();
        }
        // Up and writing (a first start also elects and bootstraps).
        let deadline = Instant::now() + Duration::from_secs(30);
        let first = loop {
            next += 1;
            if let Some(t) = write(next).await {
                break t;
            }
            assert!(
                Instant::now() < deadline,
                "{what}, cycle {cycle}: no write acknowledged within 30 s of the start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if let Err(missing) = survived(std::mem::take(&mut acked_before)).await {
            panic!("{what}, cycle {cycle}: writes acknowledged before the last stop are lost: {missing}");
        }
        acked_before.push(first);

        // Writers keep writing through the stop.
        let acked = Arc::new(Mutex::new(Vec::new()));
        let base = next;
        next += 1_000_000;
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (write, acked) = (write.clone(), acked.clone());
                tokio::spawn(async move {
                    let mut n = base + w;
                    loop {
                        if let Some(t) = write(n).await {
                            acked.lock().unwrap_or_else(|p| p.into_inner()).push(t);
                        }
                        n += WRITERS;
                    }
                })
            })
            .collect();
        TestCluster::wait_until("writes in flight", Duration::from_secs(20), || {
            let n = acked.lock().unwrap_or_else(|p| p.into_inner()).len();
            async move { n >= 2 * WRITERS as usize }
        })
        .await;
        let (status, log) = tokio::task::block_in_place(&mut stop);
        for w in &writers {
            w.abort();
        }
        for w in writers {
            let _ = w.await;
        }
        let status = status.unwrap_or_else(|| {
            panic!("{what}, cycle {cycle}: still running {STOP_WAIT:?} after SIGTERM\n{log}")
        });
        assert!(
            status.success(),
            "{what}, cycle {cycle}: a SIGTERM stop exited with {status}\n{}",
            tail(&log)
        );
        acked_before.extend(acked.lock().unwrap_or_else(|p| p.into_inner()).drain(..));
    }
    start();
    if let Err(missing) = survived(acked_before).await {
        panic!("{what}: writes acknowledged before the last stop are lost: {missing}");
    }
}

/// Stops node 1 of `c` with SIGTERM: its exit status (None: still running after `STOP_WAIT`)
/// and its log.
fn stop_node(c: &Mutex<TestCluster>) -> (Option<ExitStatus>, String) {
    let mut c = c.lock().expect("cluster");
    c.terminate(1);
    let status = c.wait_exit(1, STOP_WAIT);
    let log = std::fs::read_to_string(c.log_path(1)).unwrap_or_default();
    (status, log)
}

/// The last lines of a log, for a failure message.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Puts key `k{n}` through `client`; `Some(n)` once acknowledged.
fn put_write(client: Client) -> Write {
    Arc::new(move |n| {
        let client = client.clone();
        Box::pin(async move {
            let k = format!("k{n:08}");
            client.put(k.clone(), k).await.ok().map(|_| n)
        })
    })
}

/// Reads back every key `k{n}` of `ns` through `client`, linearizably.
fn keys_survived(client: Client) -> Survived {
    Arc::new(move |ns| {
        let client = client.clone();
        Box::pin(async move {
            let mut missing = BTreeSet::new();
            for n in ns {
                let k = format!("k{n:08}");
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    match client
                        .get_with(k.clone(), ReadConsistency::Linearizable)
                        .await
                    {
                        Ok(Some(v)) if v == k.as_bytes() => break,
                        Ok(_) => {
                            missing.insert(k);
                            break;
                        }
                        Err(e) if Instant::now() >= deadline => {
                            return Err(format!("{k} cannot be read: {e}"));
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("{missing:?}"))
            }
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_node_stops_with_exit_0_every_time_even_with_writes_in_flight() {
    let c = Arc::new(Mutex::new(TestCluster::start(1)));
    let client = c.lock().expect("cluster").client();
    let (c1, c2) = (c.clone(), c.clone());
    cycles(
        "config-file node",
        move || c1.lock().expect("cluster").restart(1),
        move || stop_node(&c2),
        put_write(client.clone()),
        keys_survived(client),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pd_mode_store_stops_with_exit_0_every_time_even_with_writes_in_flight() {
    let c = RegionCluster::start_with_replicas(
        1,
        Split {
            keys: 1_000_000,
            check_ms: 1_000,
        },
        1,
    );
    let client = Client::with_pd([c.pd_addr()], quick_options()).expect("client");
    let c = Arc::new(Mutex::new(c));
    let (c1, c2) = (c.clone(), c.clone());
    cycles(
        "PD-mode store",
        move || c1.lock().expect("cluster").restart(1),
        move || {
            let mut c = c2.lock().expect("cluster");
            let status = c.terminate(1, STOP_WAIT);
            (
                status,
                std::fs::read_to_string(c.log_path(1)).unwrap_or_default(),
            )
        },
        put_write(client.clone()),
        keys_survived(client),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rdb_pd_node_stops_with_exit_0_every_time_even_with_writes_in_flight() {
    let c = Arc::new(Mutex::new(TestCluster::start_pd(1, "")));
    let addr = c.lock().expect("cluster").nodes[0].client_addr.clone();
    let pd = PdClient::with_options([addr], quick_options()).expect("pd client");
    let (c1, c2) = (c.clone(), c.clone());
    let alloc = pd.clone();
    // A write is an id allocation; after a restart PD must never give out an id it gave before.
    let write: Write = Arc::new(move |_| {
        let pd = alloc.clone();
        Box::pin(async move { pd.alloc_ids(1).await.ok() })
    });
    let survived: Survived = Arc::new(move |ids| {
        let pd = pd.clone();
        Box::pin(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            let fresh = loop {
                match pd.alloc_ids(1).await {
                    Ok(id) => break id,
                    Err(e) if Instant::now() >= deadline => {
                        return Err(format!("no id allocated after the restart: {e}"))
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            };
            match ids.iter().max() {
                Some(&max) if fresh <= max => Err(format!(
                    "PD handed out id {fresh} after a restart, though it had acknowledged {max}"
                )),
                _ => Ok(()),
            }
        })
    });
    cycles(
        "rdb-pd node",
        move || c1.lock().expect("cluster").restart(1),
        move || stop_node(&c2),
        write,
        survived,
    )
    .await;
}

/// Waits until node 1's log is longer than `before` bytes: the process runs its own code
/// (its logger is up; a signal before that point is the default action's, not the node's).
async fn first_log_line(c: &TestCluster, before: u64, cycle: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(c.log_path(1)).map_or(0, |m| m.len()) <= before {
        assert!(Instant::now() < deadline, "cycle {cycle}: no log line");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rdb_pd_node_stopped_while_it_starts_exits_0() {
    let mut c = TestCluster::start_pd(1, "");
    first_log_line(&c, 0, 0).await;
    for cycle in 0..20 {
        // Stopped as soon as it says anything: while it still opens its data and starts its
        // Raft group.
        c.terminate(1);
        let status = c.wait_exit(1, STOP_WAIT);
        let log = std::fs::read_to_string(c.log_path(1)).unwrap_or_default();
        assert!(
            status.is_some_and(|s| s.success()),
            "cycle {cycle}: a stop while starting exited with {status:?}\n{}",
            tail(&log)
        );
        let before = std::fs::metadata(c.log_path(1)).map_or(0, |m| m.len());
        c.restart(1);
        first_log_line(&c, before, cycle).await;
    }
}
