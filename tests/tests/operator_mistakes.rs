//! What an operator's usual mistakes on a PD-mode cluster get, against real processes: a
//! refusal with its cause and what to do instead, never a silent success.

use std::time::Duration;

use std::process::{Command, Output, Stdio};

use rdb_client::pd::StoreState;
use rdb_tests::cluster::{bin_dir, explain};
use rdb_tests::regions::{RegionCluster, Setup, Split};

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
        )) && stderr.contains("store remove"),
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

/// Runs `rdb-cli ARGS...` with no endpoints from the environment.
fn cli(args: &[&str]) -> Output {
    Command::new(bin_dir().join("rdb-cli"))
        .args(["--timeout-ms", "5000"])
        .args(args)
        .env_remove("RDB_ENDPOINTS")
        .env_remove("RDB_PD")
        .env_remove("RDB_REGIONS")
        .stdin(Stdio::null())
        .output()
        .expect("run rdb-cli (cargo build --workspace --bins)")
}

/// Asserts that `o` exited with `code` and one line on stderr holding every one of `says`,
/// and nothing on stdout.
fn refused(o: &Output, code: i32, says: &[&str]) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "{}", explain(o));
    assert_eq!(stderr.lines().count(), 1, "{}", explain(o));
    for s in says {
        assert!(stderr.contains(s), "wanted {s:?}: {}", explain(o));
    }
    assert!(
        o.stdout.is_empty(),
        "printed as if it worked: {}",
        explain(o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_aimed_at_the_wrong_kind_of_address_say_so_and_fail() {
    let c = RegionCluster::start(3, NO_SPLITS);
    c.wait_regions(1, Duration::from_secs(60)).await;
    let pd = c.pd_addr();
    let store = c.addrs[0].clone();

    // `status` with --pd (and --regions or not) shows every store PD knows, with its regions;
    // a store asked directly shows its own.
    for o in [
        cli(&["--pd", &pd, "--regions", "status"]),
        cli(&["--pd", &pd, "status"]),
    ] {
        assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(
            out.matches("store (1 regions)").count(),
            3,
            "{}",
            explain(&o)
        );
    }
    let o = cli(&["--endpoints", &store, "status"]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("store (1 regions)"),
        "{}",
        explain(&o)
    );
    // A whole-group command with --regions: a PD-mode cluster has no single group.
    for args in [
        &["leader", "transfer", "2"][..],
        &["snapshot", "save", "/nonexistent/backup"][..],
    ] {
        let o = cli(&[&["--pd", &pd, "--regions"][..], args].concat());
        refused(&o, 2, &["leave out --regions"]);
        assert!(!String::from_utf8_lossy(&o.stderr).contains("Client::new"));
    }
    // --pd alone does not send a KV or group command to the default endpoint.
    refused(
        &cli(&["--pd", &pd, "get", "k"]),
        2,
        &["give --endpoints, or --regions"],
    );
    // A store's address where a group's node is expected: it names no region.
    refused(
        &cli(&["--endpoints", &store, "member", "list"]),
        2,
        &["a store of a PD-mode cluster", "--region"],
    );
    // A store's address given as PD's, and PD's as a node's.
    refused(
        &cli(&["--pd", &store, "tso"]),
        1,
        &[&format!(
            "{store} does not serve the PD API: it is not a PD node"
        )],
    );
    refused(
        &cli(&["--endpoints", &pd, "get", "k"]),
        1,
        &[&format!("{pd} does not serve the KV API")],
    );
    // `status` shows every endpoint's row, the failed ones with their cause.
    let o = cli(&["--endpoints", &pd, "status"]);
    assert_eq!(o.status.code(), Some(4), "{}", explain(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("{pd} does not serve the KV API")),
        "{}",
        explain(&o)
    );
    // A region range that ends before it starts.
    refused(
        &cli(&["--pd", &pd, "region", "list", "--start", "h", "--end", "b"]),
        2,
        &["--start must come before --end"],
    );
    // What works still works.
    let o = cli(&["--pd", &pd, "region", "list", "--start", "b", "--end", "h"]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    let o = cli(&["--pd", &pd, "--regions", "check"]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_registered_and_died_is_not_picked_for_the_first_region() {
    // Down after 3 s of silence (more than the 2 s between a live store's heartbeats); region
    // 1 on two stores.
    let mut c = RegionCluster::with_pd_only(
        3,
        NO_SPLITS,
        Setup {
            replicas: 2,
            pd_tables: "[pd]\nstore_down_after_secs = 3\n".into(),
            ..Setup::default()
        },
    );
    // Store 1 registers (the smallest id), waits for a second store, and dies.
    c.restart(1);
    let pd = c.pd_client();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while pd.get_all_stores(true).await.map_or(0, |s| s.len()) < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "store 1 never registered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.kill(1);
    let dead = pd.get_all_stores(true).await.expect("stores")[0].id;
    // Until PD counts it Down, it is a registered store like any other.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stores = pd.get_all_stores(true).await.expect("stores");
        if stores
            .iter()
            .any(|s| s.id == dead && s.state == StoreState::Down)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "store 1 never went Down: {stores:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Two live stores bootstrap the cluster between them.
    c.restart(2);
    c.restart(3);
    let regions = c.wait_regions(1, Duration::from_secs(30)).await;
    assert!(
        !regions[0].region.peers.iter().any(|p| p.store_id == dead),
        "region 1 was bootstrapped on the dead store: {regions:?}"
    );
    c.client()
        .put("k", "v")
        .await
        .expect("the cluster takes writes");
}
