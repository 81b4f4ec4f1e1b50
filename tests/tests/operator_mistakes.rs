//! What an operator's usual mistakes on a PD-mode cluster get, against real processes: a
//! refusal with its cause and what to do instead, never a silent success.

use std::time::Duration;

use rdb_client::pd::StoreState;
use rdb_tests::cluster::explain;
use rdb_tests::regions::{RegionCluster, Split};

/// Splits that never happen in these tests.
const NO_SPLITS: Split = Split {
    keys: 1_000_000,
    check_ms: 1000,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_holding_replicas_is_not_tombstoned_and_an_empty_one_is() {
    // Four stores, region 1 on three of them: one store holds no replica.
    let c = RegionCluster::start_with_replicas(4, NO_SPLITS, 3);
    let regions = c.wait_regions(1, Duration::from_secs(60)).await;
    let holders: Vec<u64> = regions[0].region.peers.iter().map(|p| p.store_id).collect();
    let mut ids = Vec::new();
    for i in 1..=4 {
        ids.push(c.store_id(i).await);
    }
    let empty = *ids
        .iter()
        .find(|id| !holders.contains(id))
        .expect("a store without a replica");
    let holder = holders[0];

    let o = c.pd_cli(&["store", "tombstone", &holder.to_string()]);
    assert_eq!(o.status.code(), Some(1), "{}", explain(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(stderr.lines().count(), 1, "{}", explain(&o));
    assert!(
        stderr.contains(&format!(
            "store {holder} holds a replica of region {}",
            regions[0].region.id
        )) && stderr.contains("moved to other stores"),
        "{}",
        explain(&o)
    );
    let stores = c.pd_client().get_all_stores(false).await.expect("stores");
    let state = |id: u64| stores.iter().find(|s| s.id == id).map(|s| s.state);
    assert_ne!(state(holder), Some(StoreState::Tombstone), "{stores:?}");

    let o = c.pd_cli(&["store", "tombstone", &empty.to_string()]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    let stores = c.pd_client().get_all_stores(false).await.expect("stores");
    assert_eq!(
        stores.iter().find(|s| s.id == empty).map(|s| s.state),
        Some(StoreState::Tombstone),
        "{stores:?}"
    );
}

/// The lines of store `i`'s log that say its `--replicas` is not the cluster's.
fn replicas_warnings(c: &RegionCluster, i: usize) -> Vec<String> {
    std::fs::read_to_string(c.log_path(i))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("--replicas differs from the cluster's replication factor"))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_started_with_another_replicas_value_than_the_clusters_warns_naming_both() {
    let mut c = RegionCluster::start_with_replicas(4, NO_SPLITS, 3);
    c.wait_regions(1, Duration::from_secs(60)).await;
    assert_eq!(
        c.pd_client().bootstrapped_replicas().await.expect("PD"),
        Some(3),
        "PD records the replication factor at bootstrap"
    );
    c.kill(4);
    c.restart_with_replicas(4, 5);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let warned = loop {
        let lines = replicas_warnings(&c, 4);
        if !lines.is_empty() || std::time::Instant::now() >= deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(warned.len(), 1, "store 4 log: {warned:?}");
    assert!(
        warned[0].contains("replicas: 5") && warned[0].contains("cluster_replicas: 3"),
        "{}",
        warned[0]
    );
    assert!(c.is_running(4), "a warning, not a refusal");
    for i in 1..=3 {
        assert_eq!(replicas_warnings(&c, i), Vec::<String>::new(), "store {i}");
    }
}
