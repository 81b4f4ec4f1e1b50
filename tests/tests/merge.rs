//! Region merge (specs/017-merge) against real processes: one rdb-pd node and three
//! `rdb-server --pd` stores. Regions split under writes, then two neighbours are merged by
//! hand (`rdb-cli --pd PD region merge SOURCE TARGET`) while writers run; nothing acknowledged
//! is lost, the replicas agree, and the merge outlives restarts and a crash in its middle. PD
//! merges small neighbours by itself once most keys are deleted.

use std::time::{Duration, Instant};

use rdb_client::{Client, ReadConsistency, ScanRange};
use rdb_tests::regions::{key, write_rounds, KeyWrites, RegionCluster, Split};

const KEYS: usize = 300;

/// A cluster whose regions split into at least three at 50 keys each, every key written
/// once; then every store restarted (kill -9) with a threshold no test reaches, so the regions
/// stay as they are while the test merges them.
async fn split_cluster() -> RegionCluster {
    let mut c = RegionCluster::start(
        3,
        Split {
            keys: 50,
            check_ms: 200,
        },
    );
    let client = c.client();
    write_rounds(&client, KEYS, 1, 4).await;
    c.wait_regions(3, Duration::from_secs(30)).await;
    c.set_split(Split {
        keys: 1_000_000,
        check_ms: 200,
    });
    for i in 1..=3 {
        c.kill(i);
        c.restart(i);
    }
    c
}

/// Runs `rdb-cli --pd PD region merge SOURCE TARGET` until it succeeds (a store just restarted
/// may have no leader yet); returns its stdout.
async fn merge_by_hand(c: &RegionCluster, source: u64, target: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = c.pd_cli(&["region", "merge", &source.to_string(), &target.to_string()]);
        if o.status.success() {
            return String::from_utf8_lossy(&o.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "region merge never succeeded: exit {:?}: {}",
            o.status.code(),
            String::from_utf8_lossy(&o.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until PD's map has no region `source` and one region from `start` to `end` (the two
/// merged), every region with a leader.
async fn wait_merged(c: &RegionCluster, source: u64, start: &[u8], end: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let regions = c.regions().await;
        let merged = !regions.iter().any(|r| r.region.id == source)
            && regions
                .iter()
                .any(|r| r.region.start_key == start && r.region.end_key == end)
            && regions.iter().all(|r| r.leader.is_some());
        if merged {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "PD never showed region {source} merged: {regions:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every key reads back (linearizable) as one of the values it may hold, and a full scan
/// returns each key once, in order.
async fn reads_back(client: &Client, written: &std::collections::BTreeMap<String, KeyWrites>) {
    for (k, w) in written {
        let got = client.get(k.clone()).await.expect("get");
        let got = got.map(|v| String::from_utf8_lossy(&v).into_owned());
        assert!(w.allows(got.as_deref()), "{k} holds {got:?}, written {w:?}");
    }
    let all = client
        .scan(
            ScanRange {
                start: Vec::new(),
                end: Vec::new(),
                prefix: Vec::new(),
                limit: 0,
            },
            ReadConsistency::Linearizable,
        )
        .await
        .expect("scan");
    let keys: Vec<String> = all
        .kvs
        .iter()
        .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
        .collect();
    let expected: Vec<String> = (0..KEYS).map(key).collect();
    assert_eq!(keys, expected, "every key once, in order");
}

/// The first two neighbours PD knows: (source, target, merged start, merged end), the
/// source being the right one.
async fn neighbours(c: &RegionCluster) -> (u64, u64, Vec<u8>, Vec<u8>) {
    let regions = c.wait_regions(3, Duration::from_secs(30)).await;
    let (left, right) = (&regions[0].region, &regions[1].region);
    (
        right.id,
        left.id,
        left.start_key.clone(),
        right.end_key.clone(),
    )
}

/// A client that routes through PD's region map and its own region cache (`--regions`).
fn routed_client(c: &RegionCluster) -> Client {
    Client::with_pd([c.pd_addr()], c.options()).expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_neighbours_merged_by_hand_under_writes_keep_every_key_and_stay_merged() {
    let mut c = split_cluster().await;
    // Its cache holds both regions when the merge starts: the source's refusals, then its
    // absence, send it to PD for the merged region.
    let client = routed_client(&c);
    reads_back(&client, &Default::default()).await;
    let (source, target, start, end) = neighbours(&c).await;
    // Regions that do not touch: refused, with the cause, and nothing changes.
    let regions = c.wait_regions(3, Duration::from_secs(30)).await;
    let (first, third) = (regions[0].region.id, regions[2].region.id);
    let far = c.pd_cli(&["region", "merge", &third.to_string(), &first.to_string()]);
    let stderr = String::from_utf8_lossy(&far.stderr);
    assert_eq!(far.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("region {third} is not adjacent to region {first}")),
        "{stderr}"
    );
    let writers = {
        let client = client.clone();
        tokio::spawn(async move { write_rounds(&client, KEYS, 2, 4).await })
    };
    let out = merge_by_hand(&c, source, target).await;
    assert!(
        out.contains(&format!("region {source} is merging into region {target}")),
        "{out}"
    );
    wait_merged(&c, source, &start, &end).await;
    let written = writers.await.expect("writers");
    for (k, w) in &written {
        assert!(
            w.unknown.is_empty(),
            "a write of {k} failed across the merge: {w:?}"
        );
    }
    reads_back(&client, &written).await;
    c.assert_replicas_agree().await;

    // Every store killed and restarted: still merged, every key still there.
    for i in 1..=3 {
        c.kill(i);
        c.restart(i);
    }
    wait_merged(&c, source, &start, &end).await;
    reads_back(&client, &written).await;
    c.assert_replicas_agree().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_crashes_applying_the_merge_finishes_it_after_its_restart() {
    let mut c = split_cluster().await;
    let client = routed_client(&c);
    let (source, target, start, end) = neighbours(&c).await;
    // Store 3 stops (exit 70, as at a crash: nothing of the merge's batch written) when its
    // replica of the target applies the commit.
    c.kill(3);
    c.restart_with_env(3, &[("FAILPOINTS", "storage-merge=return")]);
    merge_by_hand(&c, source, target).await;
    let status = c.wait_exit(3, Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| !s.success()),
        "store 3 did not stop at the merge: {status:?}"
    );
    // The other two finish it; PD shows it, and writes go on.
    wait_merged(&c, source, &start, &end).await;
    let written = write_rounds(&client, KEYS, 1, 4).await;
    c.restart(3);
    reads_back(&client, &written).await;
    c.assert_replicas_agree().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pd_merges_small_neighbours_once_most_keys_are_deleted() {
    let c = RegionCluster::start_setup(
        3,
        Split {
            keys: 50,
            check_ms: 200,
        },
        rdb_tests::regions::Setup {
            pd_tables: "[pd]\nsplit_merge_interval_secs = 1\nmax_merge_region_keys = 10\n".into(),
            ..Default::default()
        },
    );
    let client = c.client();
    write_rounds(&client, KEYS, 1, 4).await;
    let before = c.wait_regions(4, Duration::from_secs(60)).await.len();
    // Most keys deleted: every region is small, and PD merges neighbours by itself.
    for i in 10..KEYS {
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.delete(key(i)).await.is_err() {
            assert!(Instant::now() < deadline, "delete {i} never succeeded");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let r = c.regions().await;
        if r.len() <= 2 && !r.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} regions of {before} left 90 s after the deletes\n{}",
            r.len(),
            c.operators()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..KEYS {
        let got = client.get(key(i)).await.expect("get");
        assert_eq!(got.is_some(), i < 10, "{}: {got:?}", key(i));
    }
    c.assert_replicas_agree().await;
    let ops = c.operators();
    assert!(
        ops.contains("merge") && ops.contains("finished"),
        "operator list shows no finished merge: {ops}"
    );
}
