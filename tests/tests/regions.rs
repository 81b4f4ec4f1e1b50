//! Regions (specs/009-regions) against real processes: one rdb-pd node and three
//! `rdb-server --pd` stores with small split thresholds.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rdb_client::{Client, Error, ReadConsistency, ScanRange};
use rdb_proto::kv::kv_client::KvClient;
use rdb_proto::kv::{ErrorCode, PutRequest, RegionContext, RequestId};
use rdb_proto::pd::RegionEpoch;
use rdb_tests::cluster::quick_options;
use rdb_tests::regions::{key, write_rounds, RegionCluster, Split};

/// Every pair of the whole key space, in order, through `client`.
async fn scan_all(client: &Client, c: ReadConsistency) -> Vec<(String, String)> {
    let page = client
        .scan(
            ScanRange {
                start: Vec::new(),
                end: Vec::new(),
                prefix: Vec::new(),
                limit: 0,
            },
            c,
        )
        .await
        .expect("scan");
    page.kvs
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            )
        })
        .collect()
}

/// What every key must hold after `write_rounds` whose every last write was acknowledged.
fn last_acked(
    written: &BTreeMap<String, rdb_tests::regions::KeyWrites>,
) -> BTreeMap<String, String> {
    written
        .iter()
        .map(|(k, w)| {
            assert!(
                w.unknown.is_empty(),
                "the last write of {k} was not acknowledged: {w:?}"
            );
            (k.clone(), w.acked.clone().expect("acknowledged"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_split_into_many_regions_that_keep_every_key_in_order_and_survive_a_store_kill() {
    let mut c = RegionCluster::start(
        3,
        Split {
            keys: 100,
            check_ms: 200,
        },
    );
    let client = c.client();
    let n = 1200;
    let acked = last_acked(&write_rounds(&client, n, 2, 8).await);
    assert_eq!(acked.len(), n);
    assert!(
        acked.values().all(|v| v.starts_with("r1-")),
        "the second round overwrote every key"
    );
    let regions = c.wait_regions(8, Duration::from_secs(30)).await;
    // Ranges tile the key space: each starts where the previous one ended.
    assert!(regions[0].region.start_key.is_empty());
    assert!(regions.last().expect("a region").region.end_key.is_empty());
    for w in regions.windows(2) {
        assert_eq!(
            w[0].region.end_key, w[1].region.start_key,
            "a gap or overlap"
        );
        assert!(
            w[1].region.epoch.version > 1,
            "a split region has a newer epoch"
        );
    }

    for (k, v) in &acked {
        assert_eq!(
            client.get(k.clone()).await.expect("get").as_deref(),
            Some(v.as_bytes()),
            "{k}"
        );
    }
    let all = scan_all(&client, ReadConsistency::Linearizable).await;
    let expected: Vec<(String, String)> = acked.clone().into_iter().collect();
    assert_eq!(
        all, expected,
        "a full scan returns every key once, in order"
    );

    // kill -9 a store: every region still serves reads and writes.
    c.kill(1);
    let regions = c.regions().await;
    for r in &regions {
        let mut k = r.region.start_key.clone();
        k.extend_from_slice(b"-after-kill");
        client
            .put(k.clone(), "x")
            .await
            .expect("put after the kill");
        assert_eq!(
            client.get(k).await.expect("get").as_deref(),
            Some(&b"x"[..])
        );
    }
    // The killed store comes back and catches up on every region: its own (serializable)
    // view of the data ends up equal to the cluster's.
    c.restart(1);
    let all = scan_all(&client, ReadConsistency::Linearizable).await;
    let only_one = Client::with_options([c.addrs[0].clone()], quick_options()).expect("client");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mine = scan_all(&only_one, ReadConsistency::Serializable).await;
        if mine == all {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted store holds {} keys, the cluster {}",
            mine.len(),
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.assert_replicas_agree().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_with_a_stale_epoch_a_foreign_key_or_an_unknown_region_are_refused_with_what_is_current(
) {
    let c = RegionCluster::start(
        3,
        Split {
            keys: 50,
            check_ms: 200,
        },
    );
    let client = c.client();
    // 90 keys split once, into two halves of about 45 that never split again: every request
    // below names the first region's epoch as read here, so it must not change meanwhile (200
    // keys went on splitting into four after two were seen, and the epoch moved under the
    // test).
    write_rounds(&client, 90, 1, 4).await;
    let regions = c.wait_regions(2, Duration::from_secs(30)).await;
    let first = regions[0].clone();
    let leader = first.leader.expect("a leader");
    let stores = c.pd_client().get_all_stores(true).await.expect("stores");
    let addr_of = |store: u64| {
        stores
            .iter()
            .find(|s| s.id == store)
            .map(|s| s.address.clone())
            .expect("store address")
    };
    let mut kv = KvClient::connect(format!("http://{}", addr_of(leader.store_id)))
        .await
        .expect("connect");
    let put = |context: RegionContext, key: &str| PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        request_id: None,
        context: Some(context),
        namespace: String::new(),
    };
    let ctx = |id: u64, version: u64, conf_ver: u64| RegionContext {
        region_id: id,
        epoch: Some(RegionEpoch { version, conf_ver }),
    };
    let (v, cv) = (first.region.epoch.version, first.region.epoch.conf_ver);
    let start = String::from_utf8_lossy(&first.region.start_key).into_owned();

    // The epoch before any split: EPOCH_NOT_MATCH, with the region as it is now and the one
    // the split made from it.
    let e = kv
        .put(put(ctx(first.region.id, 1, cv), &format!("{start}a")))
        .await
        .expect("rpc")
        .into_inner()
        .error
        .expect("refused");
    assert_eq!(e.code, ErrorCode::EpochNotMatch as i32, "{e:?}");
    assert_eq!(e.regions[0].id, first.region.id);
    assert_eq!(e.regions[0].epoch.expect("epoch").version, v);
    assert!(
        e.regions.len() >= 2,
        "the split's other half comes back too: {e:?}"
    );
    assert_eq!(e.regions[1].start_key, e.regions[0].end_key);

    // A key of another region: KEY_NOT_IN_REGION with the region's range.
    let beyond = String::from_utf8_lossy(&first.region.end_key).into_owned();
    let e = kv
        .put(put(ctx(first.region.id, v, cv), &beyond))
        .await
        .expect("rpc")
        .into_inner()
        .error
        .expect("refused");
    assert_eq!(e.code, ErrorCode::KeyNotInRegion as i32, "{e:?}");
    assert_eq!(e.regions[0].end_key, first.region.end_key);

    // A region no store has: REGION_NOT_FOUND.
    let e = kv
        .put(put(ctx(999_999, 1, 1), "k"))
        .await
        .expect("rpc")
        .into_inner()
        .error
        .expect("refused");
    assert_eq!(e.code, ErrorCode::RegionNotFound as i32, "{e:?}");

    // The current epoch at a follower's store: NOT_LEADER naming the leader's store.
    let follower = first
        .region
        .peers
        .iter()
        .find(|p| p.store_id != leader.store_id)
        .expect("a follower");
    let mut fkv = KvClient::connect(format!("http://{}", addr_of(follower.store_id)))
        .await
        .expect("connect");
    let e = fkv
        .put(put(ctx(first.region.id, v, cv), &format!("{start}a")))
        .await
        .expect("rpc")
        .into_inner()
        .error
        .expect("refused");
    assert_eq!(e.code, ErrorCode::NotLeader as i32, "{e:?}");
    let hint = e.leader.expect("hint");
    assert_eq!(
        (hint.id, hint.addr),
        (leader.store_id, addr_of(leader.store_id))
    );
    // A replica hash check is per region: a store refuses one that names no region clearly
    // instead of hashing one of its regions.
    match client.check().await {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("PD-mode store"), "{m}"),
        other => panic!("a store answered a hash check: {other:?}"),
    }
    // And with everything right, the write goes through.
    let ok = kv
        .put(put(ctx(first.region.id, v, cv), &format!("{start}a")))
        .await
        .expect("rpc")
        .into_inner();
    assert!(ok.error.is_none(), "{:?}", ok.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn splits_under_writes_and_kill_9_lose_no_acknowledged_write_and_replicas_converge() {
    let mut c = RegionCluster::start(
        3,
        Split {
            keys: 60,
            check_ms: 100,
        },
    );
    let client = c.client();
    let writer = {
        let client = client.clone();
        tokio::spawn(async move { write_rounds(&client, 600, 2, 6).await })
    };
    // Kill and restart stores at random moments while regions split.
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let mut kills = 0;
    while !writer.is_finished() {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..700))).await;
        let victim = rng.gen_range(1..=3);
        c.kill(victim);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..600))).await;
        c.restart(victim);
        kills += 1;
    }
    let written = writer.await.expect("writer");
    assert!(
        kills >= 1,
        "the writers finished before any store was killed"
    );
    c.wait_regions(4, Duration::from_secs(30)).await;
    // Every key holds its last acknowledged value, or a later one whose write failed (it
    // may or may not have applied): never an older round's.
    let all: BTreeMap<String, String> = scan_all(&client, ReadConsistency::Linearizable)
        .await
        .into_iter()
        .collect();
    assert!(
        all.keys().all(|k| written.contains_key(k)),
        "a key nobody wrote appeared"
    );
    for (k, w) in &written {
        let v = all.get(k).map(String::as_str);
        assert!(w.allows(v), "{k} holds {v:?}, written: {w:?}");
    }
    // Every store ends up with the same data: a store that missed an overwrite would still
    // hold an older round's value.
    for i in 0..3 {
        let only = Client::with_options([c.addrs[i].clone()], quick_options()).expect("client");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mine: BTreeMap<String, String> = scan_all(&only, ReadConsistency::Serializable)
                .await
                .into_iter()
                .collect();
            if mine == all {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "store {} holds {} keys, the cluster {}",
                i + 1,
                mine.len(),
                all.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // And the same records, dedup records included: every region's replicas hash equal.
    c.assert_replicas_agree().await;
}

/// The regions fault run: regions split (a filler writes around the checked keys) while
/// clients run get/put/cas/delete on three keys and stores are killed with -9 and restarted;
/// the history, final reads included, must be linearizable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn splits_under_kill_9_keep_the_history_linearizable() {
    use rdb_tests::fault::{run_regions, FaultConfig};
    use rdb_tests::linearizability::CheckResult;
    let cfg = FaultConfig {
        duration: Duration::from_secs(15),
        seed: 7,
        readers: 2,
        ..FaultConfig::default()
    };
    let report = run_regions(&cfg, 40).await;
    let ok = report
        .history
        .iter()
        .filter(|o| {
            !matches!(
                o.outcome,
                rdb_tests::linearizability::Outcome::Failed
                    | rdb_tests::linearizability::Outcome::Indeterminate
            )
        })
        .count();
    eprintln!(
        "{} ops ({ok} ok), {} regions, {} filler keys; faults: {:#?}",
        report.history.len(),
        report.regions,
        report.filler_keys,
        report.faults
    );
    assert!(ok > 50, "too few successful operations ({ok})");
    assert!(
        report.regions >= 4,
        "only {} regions: the run did not split enough to mean anything",
        report.regions
    );
    match &report.result {
        CheckResult::Linearizable => {}
        CheckResult::Illegal(v) => panic!("history not linearizable:\n{v}"),
        other => panic!("checker gave up: {other:?}"),
    }
    // Every region's replicas hold the same data, not only the reads agree.
    let checks = report.replicas.expect("a complete replica check");
    assert!(checks.len() >= 4, "{} regions checked", checks.len());
    if let Some(c) = checks.iter().find(|c| !c.consistent()) {
        panic!("region {}'s replicas differ: {c:#?}", c.region.id);
    }
}

/// `Client::with_pd` against real stores: batches and scans cut by region while regions split,
/// and routing that follows a killed leader's region to its new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pd_client_routes_batches_and_scans_by_region_through_splits_and_a_store_kill() {
    let mut c = RegionCluster::start(
        3,
        Split {
            keys: 50,
            check_ms: 100,
        },
    );
    c.wait_regions(1, Duration::from_secs(15)).await;
    let client = Client::with_pd([c.pd_addr()], quick_options()).expect("client");
    let mut expected = BTreeMap::new();
    for batch in 0..6 {
        let pairs: Vec<(String, String)> = (0..100)
            .map(|i| (key(batch * 100 + i), format!("b{batch}-{i}")))
            .collect();
        client
            .batch_put(pairs.iter().map(|(k, v)| (k.clone(), v.clone())))
            .await
            .expect("batch put");
        expected.extend(pairs);
    }
    let regions = c.wait_regions(4, Duration::from_secs(30)).await;
    let keys: Vec<String> = expected.keys().cloned().collect();
    let values = client
        .batch_get(keys.iter().cloned(), ReadConsistency::Linearizable)
        .await
        .expect("batch get");
    for (k, v) in keys.iter().zip(values) {
        assert_eq!(v.as_deref(), Some(expected[k].as_bytes()), "{k}");
    }
    let all = scan_all(&client, ReadConsistency::Linearizable).await;
    assert_eq!(all, expected.clone().into_iter().collect::<Vec<_>>());

    // Kill the store leading the region of the first key: the client finds the new leader.
    let stores = c.pd_client().get_all_stores(true).await.expect("stores");
    let leader_store = regions[0].leader.expect("leader").store_id;
    let addr = &stores
        .iter()
        .find(|s| s.id == leader_store)
        .expect("store")
        .address;
    let index = c.addrs.iter().position(|a| a == addr).expect("one of ours") + 1;
    c.kill(index);
    let k = key(0);
    client
        .put(k.clone(), "after")
        .await
        .expect("put after the kill");
    assert_eq!(
        client.get(k).await.expect("get").as_deref(),
        Some(&b"after"[..])
    );
    let deleted = client
        .batch_delete(keys.iter().take(250).cloned())
        .await
        .expect("batch delete");
    assert_eq!(deleted, 250);
    assert_eq!(
        scan_all(&client, ReadConsistency::Linearizable).await.len(),
        350
    );
}

/// SIGTERM stops a store promptly (its peer streams stay open for good, so a graceful stop
/// must not wait for them), and it comes back with its regions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_stops_on_sigterm_and_restarts_with_its_regions() {
    let mut c = RegionCluster::start(
        3,
        Split {
            keys: 50,
            check_ms: 100,
        },
    );
    let client = c.client();
    write_rounds(&client, 200, 1, 4).await;
    c.wait_regions(2, Duration::from_secs(30)).await;
    let started = std::time::Instant::now();
    let status = c.terminate(2, Duration::from_secs(6));
    assert!(
        status.is_some_and(|s| s.success()),
        "store 2 did not stop cleanly within 6 s of SIGTERM: {status:?}"
    );
    eprintln!("stopped in {:?}", started.elapsed());
    c.restart(2);
    client.put(key(5), "again").await.expect("put");
    let only = Client::with_options([c.addrs[1].clone()], quick_options()).expect("client");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = only
            .get_with(key(5), ReadConsistency::Serializable)
            .await
            .ok()
            .flatten();
        if v.as_deref() == Some(&b"again"[..]) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "store 2 did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// At most once through real processes: a put sent again with the request id of one that
/// applied long ago (another write to the key came in between) changes nothing, at the
/// region that applied it and, after a split moved the key to a new region, at that one
/// (which got the request id's record from the split).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_put_sent_again_with_its_request_id_applies_once_also_after_a_split_moved_its_key() {
    let c = RegionCluster::start(
        3,
        Split {
            keys: 50,
            check_ms: 100,
        },
    );
    c.wait_regions(1, Duration::from_secs(15)).await;
    let client = c.client();
    // Past every key `write_rounds` writes: the first split puts it in the new region.
    let k = b"zz-once".to_vec();
    let first = PutRequest {
        key: k.clone(),
        value: b"first".to_vec(),
        request_id: Some(RequestId {
            client_id: rand::random::<u64>() | 1,
            seq: 1,
        }),
        context: None,
        namespace: String::new(),
    };
    let timeout = Duration::from_secs(20);
    let before = c.put_raw(first.clone(), timeout).await;
    client.put(k.clone(), "second").await.expect("put");
    // The same request again: answered, not applied.
    assert_eq!(c.put_raw(first.clone(), timeout).await, before);
    assert_eq!(
        client.get(k.clone()).await.expect("get").as_deref(),
        Some(&b"second"[..]),
        "the repeated request applied again"
    );
    // Split the key's region: the key lands in a new region.
    write_rounds(&client, 200, 1, 4).await;
    let pd = c.pd_client();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = pd.get_region(k.clone()).await.ok().flatten();
        if now
            .as_ref()
            .is_some_and(|r| r.region.id != before && r.leader.is_some())
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the key's region never split: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = c.put_raw(first, timeout).await;
    assert_ne!(after, before, "sent to the new region");
    assert_eq!(
        client.get(k).await.expect("get").as_deref(),
        Some(&b"second"[..]),
        "the repeated request applied again in the region the split made"
    );
}
