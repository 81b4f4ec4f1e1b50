//! Backup and restore of a PD-mode cluster on real processes: `rdb-cli --pd ... snapshot save`
//! saves every region from its leader into one file, and `rdb-server --restore FILE --pd ...
//! --data-dir ...` seeds the stores of a new PD cluster from it: the regions are kept, every
//! key reads back, and ids PD allocates afterwards collide with none of the restored ones.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;
use std::time::Duration;

use rdb_client::{Client, ReadConsistency, ScanRange};
use rdb_tests::regions::{key, write_rounds, RegionCluster, Split};

const SECS: fn(u64) -> Duration = Duration::from_secs;
const SPLIT: Split = Split {
    keys: 40,
    check_ms: 200,
};

fn explain(o: &Output) -> String {
    format!(
        "exit {:?}, stdout {:?}, stderr {:?}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every key and value a PD-mode client of `c` scans, waiting (up to 30 s) until the scan
/// succeeds.
async fn scan_all(c: &RegionCluster) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let client = Client::with_pd([c.pd_addr()], c.options()).expect("client");
    let deadline = std::time::Instant::now() + SECS(30);
    loop {
        match client
            .scan(ScanRange::default(), ReadConsistency::Linearizable)
            .await
        {
            Ok(page) => return page.kvs.into_iter().collect(),
            Err(e) if std::time::Instant::now() >= deadline => panic!("scan: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pd_mode_backup_restores_every_region_into_a_new_pd_cluster() {
    let c = RegionCluster::start(3, SPLIT);
    let client = Client::with_pd([c.pd_addr()], c.options()).expect("client");
    let written = write_rounds(&client, 300, 1, 4).await;
    let before = c.wait_regions(4, SECS(30)).await;
    let file = c.dir().join("cluster.rdb");
    let path = file.to_str().expect("utf-8 path");
    // Regions may still split while the save runs: the save starts over by itself, and after
    // five tries it asks to be run again once splits settle, as an operator would.
    let deadline = std::time::Instant::now() + SECS(60);
    let saved = loop {
        let saved = c.pd_cli(&["-o", "json", "snapshot", "save", path]);
        let settling = String::from_utf8_lossy(&saved.stderr).contains("save again");
        if saved.status.success() || !settling || std::time::Instant::now() >= deadline {
            break saved;
        }
    };
    assert!(saved.status.success(), "save: {}", explain(&saved));
    let report: serde_json::Value = serde_json::from_slice(&saved.stdout).expect("json");
    assert_eq!(report["keys"], 300, "{report}");
    // Each region as saved: id, start and end.
    let saved_regions: Vec<(u64, String, String)> = report["regions"]
        .as_array()
        .expect("regions")
        .iter()
        .map(|r| {
            let text = |f: &str| r[f].as_str().expect("a key").to_string();
            (
                r["region"].as_u64().expect("id"),
                text("start_key"),
                text("end_key"),
            )
        })
        .collect();
    let regions_saved = saved_regions.len();
    assert!(regions_saved >= before.len(), "{report}");
    // The source's data, as a scan of it gives it; no write runs any more.
    let source = scan_all(&c).await;
    assert_eq!(source.len(), 300);
    for (k, w) in &written {
        let v = source
            .get(k.as_bytes())
            .map(|v| String::from_utf8_lossy(v).to_string());
        assert!(w.allows(v.as_deref()), "{k}: {v:?}");
    }

    let (mut r, out) = RegionCluster::restore_from(&file, 3, SPLIT);
    assert!(out.status.success(), "restore: {}", explain(&out));
    let lines = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(lines.lines().count(), 3, "one line per store: {lines}");
    assert!(
        lines.lines().all(|l| l.starts_with("restored store ")
            && l.contains(&format!(": {regions_saved} regions, 300 keys"))),
        "{lines}"
    );
    // The new PD has the regions (ids and ranges kept), each with a peer on every new store.
    let recorded = r.regions().await;
    let restored: Vec<(u64, String, String)> = recorded
        .iter()
        .map(|i| {
            let text = |k: &[u8]| String::from_utf8_lossy(k).to_string();
            (
                i.region.id,
                text(&i.region.start_key),
                text(&i.region.end_key),
            )
        })
        .collect();
    assert_eq!(restored, saved_regions);
    assert!(
        recorded.iter().all(|i| i.region.peers.len() == 3),
        "{recorded:?}"
    );
    let old_ids: BTreeSet<u64> = recorded.iter().map(|i| i.region.id).collect();
    for i in 1..=3 {
        r.restart(i);
    }
    r.wait_regions(regions_saved, SECS(30)).await;
    assert_eq!(scan_all(&r).await, source, "every key reads back");

    // The new cluster goes on: a write, then splits whose ids PD allocates after the restore.
    let client = Client::with_pd([r.pd_addr()], r.options()).expect("client");
    for i in 300..500 {
        client.put(key(i), format!("new-{i}")).await.expect("put");
    }
    let grown = r.wait_regions(regions_saved + 1, SECS(30)).await;
    let mut peer_ids = BTreeSet::new();
    for g in &grown {
        for p in &g.region.peers {
            assert!(peer_ids.insert(p.id), "peer id {} twice: {grown:?}", p.id);
        }
        if !old_ids.contains(&g.region.id) {
            assert!(
                g.region.id > *old_ids.last().expect("regions"),
                "new region {} below a restored id: {old_ids:?}",
                g.region.id
            );
        }
    }
    assert_eq!(scan_all(&r).await.len(), 500);

    // A second restore into that PD cluster is refused and creates nothing.
    let fresh: Vec<_> = (1..=3).map(|i| r.dir().join(format!("again{i}"))).collect();
    let again = r.restore_into(&file, fresh.clone());
    assert!(!again.status.success(), "{}", explain(&again));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("bootstrapped already"), "{err}");
    for d in &fresh {
        assert!(!d.exists(), "{} was created", d.display());
    }
}
