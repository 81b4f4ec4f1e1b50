//! Versioned keys against real processes (specs/018-versions): every write's revision, each
//! key's versions, reads at a past revision, `Compacted` below the history kept, `compact R`,
//! through the client library and `rdb-cli`, across a follower's restart, a snapshot install
//! and a leader change; in PD mode, revisions that are PD timestamps across regions.

use std::process::Output;
use std::time::Duration;

use rdb_client::{Condition, Error, ReadConsistency};
use rdb_tests::cluster::{explain, rdb_cli as cli, scrape_metrics, Settings, TestCluster};
use rdb_tests::regions::{key, write_rounds, RegionCluster, Split};

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", explain(o)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_get_revisions_and_old_versions_read_until_compacted() {
    let keep = 5;
    let mut c = TestCluster::start_with(3, Settings(format!("history_revisions = {keep}\n")));
    c.wait_leader(Duration::from_secs(20)).await;
    let client = c.client();

    let r1 = client.put("k", "v1").await.expect("put");
    let r2 = client.put("k", "v2").await.expect("put");
    assert_eq!(r2, r1 + 1, "each write takes the next revision");
    let read = client
        .get_versioned("k", 0, ReadConsistency::Linearizable)
        .await
        .expect("get");
    let v = read.version.clone().expect("k exists");
    assert_eq!(
        (
            v.value.as_slice(),
            v.create_revision,
            v.mod_revision,
            v.version
        ),
        (&b"v2"[..], r1, r2, 2)
    );
    assert!(read.revision >= r2);
    let old = client
        .get_versioned("k", r1, ReadConsistency::Linearizable)
        .await
        .expect("get at r1");
    assert_eq!(old.version.map(|v| v.value), Some(b"v1".to_vec()));
    assert_eq!(old.revision, r1);

    // rdb-cli: -o json shows the versions; --rev reads the past.
    let o = cli(&c.endpoints(), &["-o", "json", "get", "k"]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    let j = json(&o);
    assert_eq!(
        (
            j["value"].as_str(),
            j["create_revision"].as_u64(),
            j["mod_revision"].as_u64(),
            j["version"].as_u64()
        ),
        (Some("v2"), Some(r1), Some(r2), Some(2)),
        "{j}"
    );
    let o = cli(&c.endpoints(), &["get", "k", "--rev", &r1.to_string()]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "v1",
        "{}",
        explain(&o)
    );
    // A scan at a revision sees the keys as they were then: "j" did not exist at r2.
    client.put("j", "later").await.expect("put");
    let o = cli(&c.endpoints(), &["scan", "--rev", &r2.to_string()]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "k\tv2",
        "{}",
        explain(&o)
    );
    let o = cli(&c.endpoints(), &["scan"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "j\tlater\nk\tv2",
        "{}",
        explain(&o)
    );

    // A follower restarted in the middle keeps the same versions.
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    c.kill(follower);
    let mut last = r2;
    for i in 0..3 * keep {
        last = client.put(format!("other{i}"), "x").await.expect("put");
    }
    c.restart(follower);
    let f = c.client_for(follower);
    TestCluster::wait_until(
        "the follower applied the last write",
        Duration::from_secs(30),
        || {
            let f = f.clone();
            async move {
                f.get_versioned("other0", 0, ReadConsistency::Serializable)
                    .await
                    .is_ok_and(|r| r.revision >= last)
            }
        },
    )
    .await;
    let at_follower = f
        .get_versioned("k", 0, ReadConsistency::Serializable)
        .await
        .expect("follower read");
    assert_eq!(at_follower.version, read.version, "the follower's versions");

    // History behind the last `keep` revisions is gone: a typed error, on every replica.
    for client in [&client, &f] {
        match client
            .get_versioned("k", r1, ReadConsistency::Serializable)
            .await
        {
            Err(Error::Compacted(m)) => assert!(
                m.contains(&format!("revision {r1} is compacted"))
                    && m.contains(&format!("history starts at {}", last - keep)),
                "{m}"
            ),
            other => panic!("a read below the history kept: {other:?}"),
        }
    }
    match client
        .get_versioned("k", last + 100, ReadConsistency::Linearizable)
        .await
    {
        Err(Error::FutureRevision(m)) => assert!(m.contains("not reached"), "{m}"),
        other => panic!("a read above the last revision: {other:?}"),
    }
    let o = cli(&c.endpoints(), &["get", "k", "--rev", &r1.to_string()]);
    assert_eq!(o.status.code(), Some(2), "{}", explain(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is compacted"),
        "{}",
        explain(&o)
    );
    // The newest version is still there, at any revision from the compacted one on.
    let now = client
        .get_versioned("k", last - keep, ReadConsistency::Linearizable)
        .await
        .expect("read at the compacted revision");
    assert_eq!(now.version.map(|v| v.value), Some(b"v2".to_vec()));

    // Conditional writes by version and by mod_revision, through rdb-cli and the client.
    let o = cli(
        &c.endpoints(),
        &["cas", "k", "v3", "--expected-version", "2"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    let o = cli(
        &c.endpoints(),
        &["cas", "k", "v4", "--expected-version", "2"],
    );
    assert_eq!(o.status.code(), Some(6), "{}", explain(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("current value: v3 (version 3,"),
        "{}",
        explain(&o)
    );
    let o = cli(
        &c.endpoints(),
        &["delete", "k", "--expected-mod-revision", "1"],
    );
    assert_eq!(o.status.code(), Some(6), "{}", explain(&o));
    let refused = client
        .delete_if("k", Condition::ModRevision(r1))
        .await
        .expect("delete_if");
    assert!(refused.refused && !refused.deleted, "{refused:?}");
    assert_eq!(refused.current.map(|v| v.version), Some(3));
    let gone = client
        .delete_if("k", Condition::Version(3))
        .await
        .expect("delete_if");
    assert!(gone.deleted && !gone.refused, "{gone:?}");
    assert_eq!(client.get("k").await.expect("get"), None);
    let created = client
        .cas_if("k", Condition::Version(0), "again")
        .await
        .expect("cas_if");
    assert!(created.succeeded, "{created:?}");
}

/// `compact R` by hand, through the log: reads below R fail on every replica (the leader's
/// and a follower's), answers at and above R stay, a revision not reached is refused, and the
/// replicas still hash alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compact_by_hand_drops_history_below_it_on_every_replica() {
    let c = TestCluster::start_with(3, Settings("history_revisions = 0\n".into()));
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let client = c.client();
    let mut revs = Vec::new();
    for i in 0..10 {
        revs.push(client.put("k", format!("v{i}")).await.expect("put"));
    }
    let last = *revs.last().expect("writes");
    let cut = revs[5];
    // Everything is kept until compacted (retention 0).
    let first = client
        .get_versioned("k", revs[0], ReadConsistency::Linearizable)
        .await
        .expect("read at the first revision");
    assert_eq!(first.version.map(|v| v.value), Some(b"v0".to_vec()));

    let o = cli(&c.endpoints(), &["-o", "json", "compact", &cut.to_string()]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    assert_eq!(json(&o)["compacted"].as_u64(), Some(cut), "{}", explain(&o));

    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    let f = c.client_for(follower);
    for (who, client) in [("leader", &client), ("follower", &f)] {
        let refused = TestCluster::wait_until(
            "the replica applied the compaction",
            Duration::from_secs(20),
            || {
                let client = client.clone();
                async move {
                    matches!(
                        client
                            .get_versioned("k", cut - 1, ReadConsistency::Serializable)
                            .await,
                        Err(Error::Compacted(_))
                    )
                }
            },
        );
        refused.await;
        let at_cut = client
            .get_versioned("k", cut, ReadConsistency::Serializable)
            .await
            .unwrap_or_else(|e| panic!("{who}: read at the compacted revision: {e}"));
        assert_eq!(
            at_cut.version.map(|v| v.value),
            Some(b"v5".to_vec()),
            "{who}"
        );
    }
    let o = cli(&c.endpoints(), &["get", "k", "--rev", &revs[2].to_string()]);
    assert_eq!(o.status.code(), Some(2), "{}", explain(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!("history starts at {cut}")),
        "{}",
        explain(&o)
    );
    // Not reached yet: refused, nothing changes.
    let o = cli(&c.endpoints(), &["compact", &(last + 100).to_string()]);
    assert_eq!(o.status.code(), Some(2), "{}", explain(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not reached"),
        "{}",
        explain(&o)
    );
    let still = client
        .get_versioned("k", cut, ReadConsistency::Linearizable)
        .await
        .expect("the compacted revision did not move");
    assert_eq!(still.version.map(|v| v.value), Some(b"v5".to_vec()));
    // Lower than the compacted revision: nothing changes, and it says where history starts.
    assert_eq!(client.compact(revs[1]).await.expect("compact"), cut);
    let o = cli(&c.endpoints(), &["check"]);
    assert_eq!(o.status.code(), Some(0), "replicas differ: {}", explain(&o));
}

/// PD mode: many concurrent writes to one region share PD's timestamp requests, and the store
/// proposes them with stamps that rise along the log, so almost none is refused at apply and
/// stamped again (when each write took its own timestamp, the order its task happened to
/// reach the store in turned a large share of them away: a third of the put rate).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pd_mode_concurrent_writes_are_stamped_once() {
    const WRITES: usize = 3000;
    let c = RegionCluster::start(
        3,
        Split {
            keys: 1_000_000,
            check_ms: 60_000,
        },
    );
    let client = c.client();
    let written = write_rounds(&client, WRITES, 1, 64).await;
    let acked = written.values().filter(|w| w.acked.is_some()).count();
    assert_eq!(acked, WRITES, "every write was acknowledged");
    let restamps: f64 = c
        .metrics_addrs
        .iter()
        .map(|a| {
            scrape_metrics(a)
                .get("rdb_write_restamps_total")
                .copied()
                .unwrap_or_else(|| panic!("{a}: no rdb_write_restamps_total"))
        })
        .sum();
    assert!(
        restamps * 50.0 < WRITES as f64,
        "{restamps} of {WRITES} concurrent writes were stamped again"
    );
}

/// PD mode: revisions are PD timestamps. Writes made one after another, each in another
/// region, get ever larger revisions; a read at a timestamp PD gave reads every region as of
/// then (a region with no write since advances to it first); a revision past every timestamp
/// is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pd_mode_revisions_order_writes_across_regions_and_read_one_cut() {
    let c = RegionCluster::start(
        3,
        Split {
            keys: 50,
            check_ms: 200,
        },
    );
    let client = c.client();
    write_rounds(&client, 300, 1, 4).await;
    let regions = c.wait_regions(3, Duration::from_secs(30)).await;
    // A key in each region.
    let keys: Vec<String> = regions
        .iter()
        .filter_map(|r| {
            (0..300).map(key).find(|k| {
                let k = k.as_bytes();
                k >= r.region.start_key.as_slice()
                    && (r.region.end_key.is_empty() || k < r.region.end_key.as_slice())
            })
        })
        .collect();
    assert!(
        keys.len() >= 3,
        "keys in {} regions: {keys:?}",
        regions.len()
    );

    let mut last = 0;
    for round in 0..5 {
        for k in &keys {
            let r = client
                .put(k.clone(), format!("r{round}"))
                .await
                .expect("put");
            assert!(
                r > last,
                "a write to {k} after one acknowledged at {last} got revision {r}"
            );
            last = r;
        }
    }
    let cut = c
        .pd_client()
        .timestamp()
        .await
        .expect("a timestamp")
        .as_u64();
    assert!(cut > last);
    // After the cut: one region is written again, the others stay idle.
    client.put(keys[0].clone(), "after").await.expect("put");
    for k in &keys {
        let read = client
            .get_versioned(k.clone(), cut, ReadConsistency::Linearizable)
            .await
            .unwrap_or_else(|e| panic!("{k} at {cut}: {e}"));
        assert_eq!(read.version.map(|v| v.value), Some(b"r4".to_vec()), "{k}");
        assert_eq!(read.revision, cut);
    }
    match client
        .get_versioned(
            keys[1].clone(),
            cut + (3_600_000 << 16),
            ReadConsistency::Linearizable,
        )
        .await
    {
        Err(Error::FutureRevision(m)) => assert!(m.contains("not reached"), "{m}"),
        other => panic!("a read an hour past every timestamp: {other:?}"),
    }
}

/// Versions carried by a snapshot install and a leader change: a follower that was down while
/// the log moved past it gets the region by snapshot (history included), then leads; its
/// answers, at the newest and at past revisions, are the old leader's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn versions_survive_a_snapshot_install_and_a_leader_change() {
    let settings = Settings(
        "snapshot_threshold = 300\ncatch_up_entries = 100\nhistory_revisions = 0\n".into(),
    );
    let mut c = TestCluster::start_with(3, settings);
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    c.kill(follower);
    let client = c.client();
    let mut revs = Vec::new();
    for i in 0..1000 {
        revs.push(
            client
                .put(format!("k{}", i % 10), format!("v{i}"))
                .await
                .expect("put"),
        );
    }
    let probes: Vec<u64> = [0, 250, 500, 999].iter().map(|&i| revs[i]).collect();
    let answers = |client: rdb_client::Client| {
        let probes = probes.clone();
        async move {
            let mut out = Vec::new();
            for k in 0..10 {
                for &r in probes.iter().chain([0u64].iter()) {
                    let read = client
                        .get_versioned(format!("k{k}"), r, ReadConsistency::Linearizable)
                        .await
                        .unwrap_or_else(|e| panic!("k{k} at {r}: {e}"));
                    out.push((k, r, read.version));
                }
            }
            out
        }
    };
    let before = answers(client.clone()).await;
    c.restart(follower);
    let log = c.log_path(follower);
    TestCluster::wait_until(
        "the follower installed a snapshot",
        Duration::from_secs(30),
        || {
            let log = log.clone();
            async move {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("snapshot install")
            }
        },
    )
    .await;
    let last = *revs.last().expect("writes");
    let f = c.client_for(follower);
    TestCluster::wait_until("the follower caught up", Duration::from_secs(30), || {
        let f = f.clone();
        async move {
            f.get_versioned("k9", 0, ReadConsistency::Serializable)
                .await
                .is_ok_and(|r| r.revision >= last)
        }
    })
    .await;
    client.transfer_leader(follower).await.expect("transfer");
    assert_eq!(c.wait_leader(Duration::from_secs(20)).await, follower);
    assert_eq!(
        answers(c.client_for(follower)).await,
        before,
        "the new leader's versions and history"
    );
    let o = cli(&c.endpoints(), &["check"]);
    assert_eq!(o.status.code(), Some(0), "replicas differ: {}", explain(&o));
}
