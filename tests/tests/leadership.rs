//! Leader transfer on real nodes: `rdb-cli leader transfer`, and a leader stopped with SIGTERM
//! handing over before it exits, so writes go on without waiting out an election timeout.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdb_tests::cluster::{bin_dir, Settings, TestCluster};

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// Elections wait 3 to 6 s here, so a handover (well under a second) cannot pass for one.
fn slow_elections() -> Settings {
    Settings("election_ticks = 60\n".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdb_cli_hands_leadership_to_the_node_named() {
    let c = TestCluster::start_with(3, slow_elections());
    let l = c.wait_leader(SECS(20)).await;
    let to = l % 3 + 1;
    let out = std::process::Command::new(bin_dir().join("rdb-cli"))
        .arg("--endpoints")
        .arg(c.endpoints().join(","))
        .args(["-o", "json", "leader", "transfer", &to.to_string()])
        .output()
        .expect("rdb-cli");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = c.status(to).await.expect("status");
    assert_eq!(s.role, "leader", "{s:?}");
    // Naming a node that is not a voter is refused.
    let out = std::process::Command::new(bin_dir().join("rdb-cli"))
        .arg("--endpoints")
        .arg(c.endpoints().join(","))
        .args(["leader", "transfer", "9"])
        .output()
        .expect("rdb-cli");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a voter"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_with_sigterm_hands_over_and_writes_go_on() {
    let mut c = TestCluster::start_with(3, slow_elections());
    let l = c.wait_leader(SECS(20)).await;
    let client = c.client();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (client, stop, done) = (client.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    client
                        .put(format!("w{w}-{i}"), "v")
                        .await
                        .unwrap_or_else(|e| panic!("a write failed across the handover: {e}"));
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    TestCluster::wait_until("writes before the stop", SECS(10), || {
        let n = done.load(Ordering::Relaxed);
        async move { n > 50 }
    })
    .await;
    let stopped = Instant::now();
    c.terminate(l);
    let mut new_leader = None;
    while new_leader.is_none() {
        for id in (1..=3).filter(|&id| id != l) {
            if c.status(id).await.is_some_and(|s| s.role == "leader") {
                new_leader = Some(id);
            }
        }
        assert!(
            stopped.elapsed() < SECS(20),
            "no new leader after the old one stopped"
        );
    }
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "a new leader took {took:?}: an election, not a handover (elections wait at least 3 s here)"
    );
    assert!(
        c.wait_exit(l, SECS(10)).is_some_and(|s| s.success()),
        "the old leader did not exit cleanly"
    );
    let before = done.load(Ordering::Relaxed);
    TestCluster::wait_until("writes after the handover", SECS(10), || {
        let n = done.load(Ordering::Relaxed);
        async move { n > before + 50 }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
}
