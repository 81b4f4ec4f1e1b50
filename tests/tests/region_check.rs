//! The replica check per region (specs/009-regions, "Replica checks") against real processes:
//! `rdb-cli --pd ADDR check` over one rdb-pd node and three `rdb-server --pd` stores.

use std::process::Output;
use std::time::Duration;

use rdb_client::{Client, RegionScope, ReplicaState};
use rdb_proto::kv::kv_client::KvClient;
use rdb_proto::kv::{ErrorCode, HashRequest, RegionContext};
use rdb_tests::cluster::explain;
use rdb_tests::regions::{key, write_rounds, RegionCluster, Split};

/// The rows of a check table after its header.
fn rows(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_regions_replicas_agree_after_writes_and_splits() {
    let c = RegionCluster::start(
        3,
        Split {
            keys: 50,
            check_ms: 100,
        },
    );
    let client = c.client();
    write_rounds(&client, 400, 2, 4).await;
    c.wait_regions(4, Duration::from_secs(30)).await;

    // Through the client: every region, each with its three peers hashed at one index.
    let checks = c.assert_replicas_agree().await;
    assert!(checks.len() >= 4, "{checks:#?}");
    for ch in &checks {
        let r = ch.report.as_ref().expect("a hash point");
        assert_eq!(r.nodes.len(), 3, "{ch:#?}");
        assert!(r.nodes.iter().all(|n| n.applied_index >= r.index));
        assert_eq!(r.agreeing().len(), 3);
    }
    let records: u64 = checks
        .iter()
        .map(|ch| ch.report.as_ref().map_or(0, |r| r.nodes[0].records))
        .sum();
    assert!(records >= 400, "{records} records over every region");

    // Through rdb-cli: one row per region, every one agreeing, exit 0.
    let o = c.pd_cli(&["check"]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    let table = rows(&o);
    assert!(table.len() >= checks.len(), "{}", explain(&o));
    assert!(
        table
            .iter()
            .all(|l| l.contains("3 of 3") && l.ends_with(" ok")),
        "{}",
        explain(&o)
    );
    let o = c.pd_cli(&["-o", "json", "check"]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(doc["consistent"], true, "{doc}");
    let regions = doc["regions"].as_array().expect("regions");
    assert!(regions.len() >= checks.len(), "{doc}");
    for r in regions {
        assert_eq!(r["consistent"], true, "{r}");
        assert_eq!(r["agreeing"].as_array().map(Vec::len), Some(3), "{r}");
        assert_eq!(r["differing"], serde_json::json!([]), "{r}");
    }

    // One region, by id or by a key it holds.
    let o = c.pd_cli(&["check", "--region", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    assert_eq!(rows(&o).len(), 1, "{}", explain(&o));
    assert!(rows(&o)[0].starts_with("1 "), "{}", explain(&o));
    let o = c.pd_cli(&["check", &key(399)]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    assert_eq!(rows(&o).len(), 1, "{}", explain(&o));
    let o = c.pd_cli(&["check", "--region", "999999"]);
    assert_eq!(o.status.code(), Some(3), "no such region: {}", explain(&o));

    // A store asked for the hash of a region it hosts no peer of says so, typed.
    let mut kv = KvClient::connect(format!("http://{}", c.addrs[0]))
        .await
        .expect("connect");
    let context = Some(RegionContext {
        region_id: 999_999,
        epoch: None,
    });
    let r = kv
        .hash(HashRequest { index: 7, context })
        .await
        .expect("rpc")
        .into_inner();
    let e = r.error.expect("refused");
    assert_eq!(e.code, ErrorCode::RegionNotFound as i32, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_whose_data_was_changed_behind_raft_is_named_for_its_region() {
    let mut c = RegionCluster::start(
        3,
        Split {
            keys: 50,
            check_ms: 100,
        },
    );
    let client = c.client();
    write_rounds(&client, 300, 1, 4).await;
    c.wait_regions(3, Duration::from_secs(30)).await;
    c.assert_replicas_agree().await;

    // Change one user value on store 3 behind RocksDB's back, as a bug would.
    let tampered = key(123);
    let odd = c.store_id(3).await;
    let status = c.terminate(3, Duration::from_secs(8));
    assert!(status.is_some_and(|s| s.success()), "stop: {status:?}");
    {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(false);
        let cfs = ["default", "raft_log", "raft_state", "data"];
        let db = rocksdb::DB::open_cf(&opts, c.data_dir(3), cfs).expect("open store 3's data");
        let data = db.cf_handle("data").expect("data family");
        let mut k = b"d".to_vec();
        k.extend_from_slice(tampered.as_bytes());
        assert!(
            db.get_cf(data, &k).expect("read").is_some(),
            "the key is where a store keeps user data"
        );
        db.put_cf(data, &k, b"tampered").expect("write");
    }
    c.restart(3);
    // Regions may still split meanwhile: "that region" is the one holding the key in each
    // check, found by its range.
    let holds = |start: &[u8], end: &[u8]| {
        let k = tampered.as_bytes();
        start <= k && (end.is_empty() || k < end)
    };

    // The client names store 3 for that region, and only there.
    let checks = c
        .check_replicas(Duration::from_secs(30))
        .await
        .expect("a complete check");
    let mut found = 0;
    for ch in &checks {
        let r = ch.report.as_ref().expect("a hash point");
        if !holds(&ch.region.start_key, &ch.region.end_key) {
            assert!(ch.consistent(), "{ch:#?}");
            continue;
        }
        found += 1;
        assert_eq!(r.majority().map(|_| r.agreeing().len()), Some(2), "{ch:#?}");
        let differing: Vec<_> = r.differing().iter().map(|n| n.node_id).collect();
        assert_eq!(differing, [Some(odd)], "{ch:#?}");
        let i = r.nodes.iter().position(|n| n.node_id == Some(odd));
        assert_eq!(i.map(|i| r.state(i)), Some(ReplicaState::Differs));
    }
    assert_eq!(found, 1, "one region holds the key: {checks:#?}");
    let one = Client::with_pd([c.pd_addr()], c.options()).expect("client");
    let checked = one
        .check_regions(RegionScope::Key(tampered.clone().into_bytes()))
        .await
        .expect("check");
    assert_eq!(checked.len(), 1);
    assert!(!checked[0].consistent(), "{checked:#?}");

    // rdb-cli exits 7 and says which store differs in which region.
    let o = c.pd_cli(&["-o", "json", "check"]);
    assert_eq!(o.status.code(), Some(7), "{}", explain(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(doc["consistent"], false, "{doc}");
    let mut found = 0;
    for r in doc["regions"].as_array().expect("regions") {
        let bound = |f: &str| r[f].as_str().expect("a key").as_bytes().to_vec();
        if holds(&bound("start_key"), &bound("end_key")) {
            found += 1;
            assert_eq!(r["differing"], serde_json::json!([odd]), "{r}");
            assert_eq!(r["consistent"], false, "{r}");
        } else {
            assert_eq!(r["consistent"], true, "{r}");
        }
    }
    assert_eq!(found, 1, "{doc}");
    let o = c.pd_cli(&["check"]);
    assert_eq!(o.status.code(), Some(7), "{}", explain(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let named = format!(
        "store {odd} at {} differs from the majority (2 of 3 agree)",
        c.addrs[2]
    );
    assert_eq!(stderr.lines().count(), 1, "{}", explain(&o));
    assert!(
        stderr.starts_with("rdb-cli: check: region ") && stderr.contains(&named),
        "{}",
        explain(&o)
    );
    let differs: Vec<String> = rows(&o)
        .into_iter()
        .filter(|l| !l.ends_with(" ok"))
        .collect();
    assert_eq!(differs.len(), 1, "{}", explain(&o));
    assert!(
        differs[0].contains("2 of 3")
            && differs[0].contains(&format!("store {odd}"))
            && differs[0].ends_with("DIFFERS"),
        "{}",
        explain(&o)
    );
}
