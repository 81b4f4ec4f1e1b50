//! PD's scheduling against real processes (specs/015-scheduling): one rdb-pd node and four
//! `rdb-server --pd` stores. A store lost for good has its regions' peers replaced on a healthy
//! store (a learner, promoted once caught up, then the dead peer removed), every acknowledged
//! write stays, and the store, back after its peers were replaced, drops them. A store an
//! operator removes is drained (its leadership first) and then tombstoned. A move toward a
//! store that dies meanwhile is cancelled once the store is down, and its learner removed. A
//! store whose task is busy for longer than PD waits before it counts a silent store gone
//! still heartbeats, and keeps its peers.

use std::time::{Duration, Instant};

use rdb_client::pd::StoreState;
use rdb_tests::regions::{write_rounds, RegionCluster, Setup, Split};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_lost_for_good_has_its_peers_replaced_and_drops_them_when_it_comes_back() {
    let mut c = RegionCluster::start_setup(
        4,
        Split {
            keys: 1_000_000,
            check_ms: 1_000,
        },
        Setup {
            // Gone after 5 s of silence (30 min by default). Down after 3 s: more than the 2 s
            // between a live store's heartbeats, or a live store would count down (and take no
            // new peer) for part of every interval.
            pd_tables: "[pd]\nstore_down_after_secs = 3\nmax_store_down_secs = 5\n".into(),
            ..Setup::default()
        },
    );
    let client = c.client();
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..50 {
        let k = format!("key{i:03}");
        while client.put(k.as_str(), format!("v{i}")).await.is_err() {
            assert!(Instant::now() < deadline, "the cluster never took writes");
        }
    }
    let region = c.wait_regions(1, Duration::from_secs(30)).await.remove(0);
    let leader = region.leader.expect("a leader").store_id;
    let mut ids = Vec::new();
    for i in 1..=4 {
        ids.push(c.store_id(i).await);
    }
    // A store with a follower of region 1: lost for good.
    let lost = (1..=4)
        .find(|&i| {
            let id = ids[i - 1];
            id != leader && region.region.peers.iter().any(|p| p.store_id == id)
        })
        .expect("a follower's store");
    let lost_id = ids[lost - 1];
    c.kill(lost);

    // Region 1 is back to three voters on live stores, with no learner left (in seconds; the
    // bound is loose for a loaded machine).
    let deadline = Instant::now() + Duration::from_secs(120);
    let repaired = loop {
        let r = c.regions().await;
        let ok = r.first().is_some_and(|r| {
            let voters = r.region.peers.iter().filter(|p| !p.learner).count();
            voters == 3
                && r.region.peers.len() == 3
                && !r.region.peers.iter().any(|p| p.store_id == lost_id)
        });
        if ok {
            break r;
        }
        if Instant::now() >= deadline {
            let mut logs = String::new();
            for i in 1..=4 {
                let text = std::fs::read_to_string(c.log_path(i)).unwrap_or_default();
                logs.push_str(&format!("--- store {i}\n"));
                for l in text.lines().filter(|l| {
                    l.contains("operator") || l.contains("PD") || l.contains("heartbeat")
                }) {
                    logs.push_str(l);
                    logs.push('\n');
                }
            }
            let pd = std::fs::read_to_string(c.pd.log_path(1)).unwrap_or_default();
            logs.push_str("--- pd\n");
            for l in pd.lines().rev().take(40) {
                logs.push_str(l);
                logs.push('\n');
            }
            panic!("region 1 was not repaired in 120 s: {r:?}\n{logs}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Every acknowledged write reads back, writes go on, and the replicas agree.
    for i in 0..50 {
        let v = client.get(format!("key{i:03}")).await.expect("get");
        assert_eq!(v.as_deref(), Some(format!("v{i}").as_bytes()));
    }
    client.put("after", "repair").await.expect("put");
    c.assert_replicas_agree().await;
    assert!(
        repaired[0].region.epoch.conf_ver >= region.region.epoch.conf_ver + 3,
        "{repaired:?}"
    );

    // The lost store comes back: its peer of region 1 was replaced, so it drops it.
    c.restart(lost);
    let log = c.log_path(lost);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("region peer removed from this store") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the returning store kept its replaced peer:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_whose_task_is_busy_past_max_store_down_keeps_heartbeating_and_its_peers() {
    let mut c = RegionCluster::start_setup(
        4,
        Split {
            keys: 1_000_000,
            check_ms: 1_000,
        },
        Setup {
            // Gone after 5 s of silence, as in the first test.
            pd_tables: "[pd]\nstore_down_after_secs = 3\nmax_store_down_secs = 5\n".into(),
            ..Setup::default()
        },
    );
    let client = c.client();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.put("warm", "up").await.is_err() {
        assert!(Instant::now() < deadline, "the cluster never took writes");
    }
    let region = c.wait_regions(1, Duration::from_secs(30)).await.remove(0);
    let leader = region.leader.expect("a leader").store_id;
    let mut ids = Vec::new();
    for i in 1..=4 {
        ids.push(c.store_id(i).await);
    }
    let busy = (1..=4)
        .find(|&i| {
            let id = ids[i - 1];
            id != leader && region.region.peers.iter().any(|p| p.store_id == id)
        })
        .expect("a follower's store");
    let busy_id = ids[busy - 1];
    // Back at once; some 100 turns later (seconds: a turn at least every 50 ms tick), one
    // turn of its task is held up for 12 s, more than twice `max_store_down_secs`.
    c.kill(busy);
    c.restart_with_env(
        busy,
        &[("FAILPOINTS", "store-turn=100*off->1*sleep(12000)")],
    );
    let log = c.log_path(busy);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let stalled = text.lines().any(|l| {
            l.contains("slow raft turn")
                && l.split(" ms: ")
                    .nth(1)
                    .and_then(|v| v.split(',').next())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .is_some_and(|ms| ms >= 12_000)
        });
        if stalled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "store {busy}'s task was not held up:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // PD heard the store throughout: it never counted it gone (no replica operator replaced
    // its peer), and the region keeps its peer there.
    let pd_log = std::fs::read_to_string(c.pd.log_path(1)).unwrap_or_default();
    let repairs: Vec<&str> = pd_log
        .lines()
        .filter(|l| l.contains("operator created") && l.contains("kind: replica"))
        .collect();
    assert!(
        repairs.is_empty(),
        "PD repaired around the busy store {busy_id}:\n{}\n{}",
        repairs.join("\n"),
        c.operators()
    );
    let r = c.wait_regions(1, Duration::from_secs(30)).await.remove(0);
    assert!(
        r.region.peers.iter().any(|p| p.store_id == busy_id),
        "region 1 lost its peer on the busy store: {r:?}"
    );
    client.put("after", "stall").await.expect("put");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_store_is_drained_then_tombstoned_and_the_last_stores_cannot_be_removed() {
    let c = RegionCluster::start(
        4,
        Split {
            keys: 1_000_000,
            check_ms: 1_000,
        },
    );
    let client = c.client();
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..50 {
        let k = format!("key{i:03}");
        while client.put(k.as_str(), format!("v{i}")).await.is_err() {
            assert!(Instant::now() < deadline, "the cluster never took writes");
        }
    }
    let region = c.wait_regions(1, Duration::from_secs(30)).await.remove(0);
    // The store leading region 1: its leadership moves first, then its peer.
    let removed = region.leader.expect("a leader").store_id;
    let id = removed.to_string();
    let o = c.pd_cli(&["store", "remove", &id]);
    assert!(o.status.success(), "{}", rdb_tests::cluster::explain(&o));

    let pd = c.pd_client();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stores = pd.get_all_stores(false).await.expect("stores");
        let state = stores.iter().find(|s| s.id == removed).map(|s| s.state);
        let regions = c.regions().await;
        let off = regions
            .iter()
            .all(|r| !r.region.peers.iter().any(|p| p.store_id == removed));
        if state == Some(StoreState::Tombstone) && off {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "store {removed} not drained in 120 s: {state:?}, {regions:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..50 {
        let v = client.get(format!("key{i:03}")).await.expect("get");
        assert_eq!(v.as_deref(), Some(format!("v{i}").as_bytes()));
    }
    c.assert_replicas_agree().await;
    // Three stores are left for three replicas: none of them can go.
    let other = pd
        .get_all_stores(true)
        .await
        .expect("stores")
        .into_iter()
        .map(|s| s.id)
        .find(|&s| s != removed)
        .expect("a store");
    let o = c.pd_cli(&["store", "remove", &other.to_string()]);
    assert!(!o.status.success(), "{}", rdb_tests::cluster::explain(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("add a store first"),
        "{}",
        rdb_tests::cluster::explain(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_toward_a_store_lost_meanwhile_is_cancelled_and_its_learner_removed() {
    // Up for 6 s after its last heartbeat, gone after 8 s; an operator waits 300 s for a step
    // before it times out.
    let mut c = RegionCluster::with_pd_only(
        4,
        Split {
            keys: 40,
            check_ms: 300,
        },
        Setup {
            pd_tables: "[pd]\nstore_down_after_secs = 6\nmax_store_down_secs = 8\n\
                        operator_timeout_secs = 300\n"
                .into(),
            ..Setup::default()
        },
    );
    for i in 1..=3 {
        c.restart(i);
    }
    let client = c.client();
    write_rounds(&client, 400, 1, 4).await;
    c.wait_regions(6, Duration::from_secs(60)).await;

    // Store 4 joins and dies at once: PD counts it up for a few seconds more, so region
    // balance adds learners there, which can never catch up to be promoted.
    c.restart(4);
    let lost = c.store_id(4).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = c
            .pd_client()
            .get_all_stores(true)
            .await
            .unwrap_or_default()
            .iter()
            .any(|s| s.id == lost && s.state == StoreState::Up);
        if up {
            break;
        }
        assert!(Instant::now() < deadline, "store 4 never heartbeat");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.kill(4);
    let learner_there = |r: &[rdb_client::pd::RegionInfo]| {
        r.iter().any(|r| {
            r.region
                .peers
                .iter()
                .any(|p| p.store_id == lost && p.learner)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if learner_there(&c.regions().await) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no move toward store {lost} began while PD counted it up: {}",
            c.operators()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Once the store is down the moves are cancelled and the learners removed, long before
    // the operators' timeout.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = c.regions().await;
        let whole = r.iter().all(|r| {
            r.region.peers.len() == 3
                && r.region
                    .peers
                    .iter()
                    .all(|p| !p.learner && p.store_id != lost)
        });
        if whole {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "regions still wait on store {lost} 60 s after it died: {r:?}\n{}",
            c.operators()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ops = c.operators();
    assert!(
        ops.contains(&format!("store {lost} is not up")),
        "no operator was cancelled for the lost store: {ops}"
    );
}
