//! Metrics and health of real nodes: counters and histograms move with traffic, and the gRPC
//! health service says NOT_SERVING on a node cut from its quorum.

use std::collections::HashMap;
use std::time::Duration;

use rdb_tests::cluster::{scrape_metrics as scrape, TestCluster};
use rdb_tests::regions::{write_rounds, RegionCluster, Split};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("{key} missing; have {:?}", m.keys().collect::<Vec<_>>()))
}

async fn health(addr: &str) -> Option<i32> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_millis(500))
        .timeout(SECS(2))
        .connect()
        .await
        .ok()?;
    let mut c = HealthClient::new(channel);
    let r = c
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()?;
    Some(r.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic_and_health_follows_the_quorum() {
    let mut c = TestCluster::start(3);
    let leader = c.wait_leader(SECS(20)).await;
    let client = c.client();
    for i in 0..200 {
        client.put(format!("k{i}"), "v").await.expect("put");
    }
    for i in 0..50 {
        client.get(format!("k{i}")).await.expect("get");
    }
    let l = scrape(&c.nodes[leader as usize - 1].metrics_addr);
    assert!(get(&l, "rdb_requests_total{op=\"put\",outcome=\"ok\"}") >= 200.0);
    assert!(get(&l, "rdb_request_duration_seconds_count{op=\"put\"}") >= 200.0);
    assert!(get(&l, "rdb_propose_apply_seconds_count") >= 200.0);
    // Linearizable gets go to every node in turn (followers ask the leader for a read index):
    // count them over the cluster.
    let all: Vec<_> = c.nodes.iter().map(|n| scrape(&n.metrics_addr)).collect();
    let total = |name: &str| all.iter().filter_map(|m| m.get(name)).sum::<f64>();
    assert!(total("rdb_requests_total{op=\"get\",outcome=\"ok\"}") >= 50.0);
    assert!(total("rdb_read_index_rounds_total") >= 1.0);
    assert!(total("rdb_reads_per_read_index_round_sum") >= 50.0);
    assert_eq!(get(&l, "rdb_raft_is_leader"), 1.0);
    let applied = get(&l, "rdb_raft_applied_index");
    assert!(applied >= 200.0, "applied {applied}");
    for n in &c.nodes {
        // Every node persisted and applied the writes.
        TestCluster::wait_until("a follower's metrics to catch up", SECS(10), || {
            let m = scrape(&n.metrics_addr);
            async move { get(&m, "rdb_raft_applied_index") >= applied }
        })
        .await;
        let m = scrape(&n.metrics_addr);
        assert!(
            get(&m, "rdb_raft_log_fsync_seconds_count") > 0.0,
            "node {}",
            n.id
        );
        assert!(get(&m, "rdb_apply_seconds_count") > 0.0, "node {}", n.id);
        assert!(
            get(&m, "rdb_raft_entries_per_append_sum") >= 200.0,
            "node {}",
            n.id
        );
        assert!(get(&m, "rdb_raft_term") >= 1.0, "node {}", n.id);
        assert!(
            get(&m, "rdb_raft_turn_seconds_count") > 0.0,
            "node {}",
            n.id
        );
        assert!(m.contains_key("rdb_rocksdb_sst_bytes"), "node {}", n.id);
        // Memory: the resident set, and what RocksDB holds of it.
        assert!(
            get(&m, "rdb_process_resident_bytes") > f64::from(1 << 20),
            "node {}",
            n.id
        );
        for part in ["block_cache", "memtables", "table_readers"] {
            let name = format!("rdb_rocksdb_memory_bytes{{part=\"{part}\"}}");
            assert!(m.contains_key(&name), "node {}: no {name}", n.id);
        }
    }
    let leaders: f64 = c
        .nodes
        .iter()
        .map(|n| get(&scrape(&n.metrics_addr), "rdb_raft_is_leader"))
        .sum();
    assert_eq!(leaders, 1.0);

    // The leader's status shows each follower's match index and lag.
    let st = client
        .status_of(&c.nodes[leader as usize - 1].client_addr)
        .await
        .expect("status");
    assert_eq!(st.followers.len(), 2, "{st:?}");
    for (id, m, lag) in &st.followers {
        assert_ne!(*id, leader);
        assert!(
            *m as f64 >= applied,
            "follower {id} matched {m}, applied {applied}"
        );
        assert_eq!(*lag, st.last_index - m);
    }

    // Health: every node serves; one left alone without its quorum does not.
    for n in &c.nodes {
        let addr = n.client_addr.clone();
        TestCluster::wait_until("every node SERVING", SECS(10), || {
            let addr = addr.clone();
            async move { health(&addr).await == Some(ServingStatus::Serving as i32) }
        })
        .await;
    }
    let alone = (leader % 3) + 1;
    for id in (1..=3).filter(|&id| id != alone) {
        c.kill(id);
    }
    let addr = c.nodes[alone as usize - 1].client_addr.clone();
    TestCluster::wait_until(
        "the node cut from its quorum to say NOT_SERVING",
        SECS(20),
        || {
            let addr = addr.clone();
            async move { health(&addr).await == Some(ServingStatus::NotServing as i32) }
        },
    )
    .await;
    for id in (1..=3).filter(|&id| id != alone) {
        c.restart(id);
    }
    TestCluster::wait_until("SERVING again once the quorum is back", SECS(20), || {
        let addr = addr.clone();
        async move { health(&addr).await == Some(ServingStatus::Serving as i32) }
    })
    .await;
}

/// Waits until `settled` holds for the regions PD knows, with store `down` down.
async fn wait_settled(
    c: &RegionCluster,
    down: Option<usize>,
    settled: &dyn Fn(&RegionCluster, Option<usize>, usize) -> bool,
) {
    let deadline = std::time::Instant::now() + SECS(20);
    loop {
        let regions = c.regions().await.len();
        if settled(c, down, regions) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "PD knows {regions} regions; the stores' gauges say otherwise: {:?}",
            (1..=c.addrs.len())
                .filter(|&i| Some(i) != down)
                .map(|i| store_roles(&scrape(&c.metrics_addrs[i - 1])))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A store's regions by role, from its metrics: (leader, follower, learner, candidate).
fn store_roles(m: &HashMap<String, f64>) -> [f64; 4] {
    ["leader", "follower", "learner", "candidate"]
        .map(|role| get(m, &format!("rdb_store_regions{{role=\"{role}\"}}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_s_metrics_count_its_regions_by_role_and_move_with_writes_and_a_store_down() {
    let mut c = RegionCluster::start(
        3,
        Split {
            keys: 50,
            check_ms: 200,
        },
    );
    let client = c.client();
    write_rounds(&client, 200, 1, 4).await;
    c.wait_regions(2, SECS(30)).await;
    // Three replicas on three stores: each hosts every region, and each region has one leader.
    let up = |c: &RegionCluster, down: Option<usize>| {
        (1..=c.addrs.len())
            .filter(|&i| Some(i) != down)
            .map(|i| scrape(&c.metrics_addrs[i - 1]))
            .collect::<Vec<_>>()
    };
    let settled = |c: &RegionCluster, down: Option<usize>, regions: usize| {
        let all = up(c, down);
        let hosted = all
            .iter()
            .all(|m| store_roles(m).iter().sum::<f64>() == regions as f64);
        let leaders: f64 = all.iter().map(|m| store_roles(m)[0]).sum();
        hosted && leaders == regions as f64
    };
    wait_settled(&c, None, &settled).await;
    for m in up(&c, None) {
        assert!(get(&m, "rdb_raft_turn_seconds_count") > 0.0);
        assert!(get(&m, "rdb_raft_leader_changes_total") >= 1.0);
        assert!(get(&m, "rdb_store_max_apply_lag") >= 0.0);
        assert!(m.contains_key("rdb_rocksdb_sst_bytes"));
        assert!(m.contains_key("rdb_rocksdb_pending_compaction_bytes"));
    }

    // A write: every store syncs it.
    let before: Vec<f64> = up(&c, None)
        .iter()
        .map(|m| get(m, "rdb_raft_log_fsync_seconds_count"))
        .collect();
    client.put("k-after", "v").await.expect("put");
    for (i, b) in before.into_iter().enumerate() {
        TestCluster::wait_until(
            "a store's synced writes to count the write",
            SECS(10),
            || {
                let m = scrape(&c.metrics_addrs[i]);
                async move { get(&m, "rdb_raft_log_fsync_seconds_count") > b }
            },
        )
        .await;
    }

    // The store leading most regions goes down: the others take its regions' leadership.
    let all = up(&c, None);
    let down = (1..=3)
        .max_by(|&a, &b| store_roles(&all[a - 1])[0].total_cmp(&store_roles(&all[b - 1])[0]))
        .expect("a store");
    assert!(store_roles(&all[down - 1])[0] >= 1.0);
    let changes: Vec<(usize, f64)> = (1..=3)
        .filter(|&i| i != down)
        .map(|i| (i, get(&all[i - 1], "rdb_raft_leader_changes_total")))
        .collect();
    c.kill(down);
    wait_settled(&c, Some(down), &settled).await;
    let moved: f64 = changes
        .iter()
        .map(|&(i, b)| {
            get(
                &scrape(&c.metrics_addrs[i - 1]),
                "rdb_raft_leader_changes_total",
            ) - b
        })
        .sum();
    assert!(moved >= 1.0, "no leader change counted on the stores left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_on_a_slow_disk_warns_of_slow_synced_writes_and_slow_turns() {
    let mut c = RegionCluster::start(
        3,
        Split {
            keys: 1_000_000_000,
            check_ms: 1_000,
        },
    );
    let client = c.client();
    client.put("warm", "up").await.expect("put");
    c.kill(1);
    // One write in five of store 1 takes 300 ms: its synced writes and its turns are slow.
    c.restart_with_env(1, &[("FAILPOINTS", "storage-write=20%sleep(300)")]);
    let deadline = std::time::Instant::now() + SECS(30);
    let mut i = 0;
    loop {
        let log = std::fs::read_to_string(c.log_path(1)).unwrap_or_default();
        let warned = |what: &str| {
            log.lines()
                .any(|l| l.contains(what) && l.contains("expected_ms") && l.contains("store"))
        };
        if warned("slow synced write of the raft log") && warned("slow raft turn") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "store 1 did not warn of its slow disk:\n{log}"
        );
        let _ = client.put(format!("k{i}"), "v").await;
        i += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_turns_are_slow_still_ticks_after_each_turn() {
    let mut c = RegionCluster::start(
        3,
        Split {
            keys: 1_000_000_000,
            check_ms: 1_000,
        },
    );
    let client = c.client();
    client.put("warm", "up").await.expect("put");
    c.kill(1);
    // Every turn of store 1's task takes 300 ms.
    c.restart_with_env(1, &[("FAILPOINTS", "store-turn=sleep(300)")]);
    // Writers keep a message always waiting for it (appends, or proposals if it leads).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (client, stop) = (c.client(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = client.put(format!("w{w}-{i}"), "v").await;
                i += 1;
            }
        }));
    }
    let addr = c.metrics_addrs[0].clone();
    let deadline = std::time::Instant::now() + SECS(30);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "store 1 does not serve metrics"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = std::time::Instant::now();
    let before = get(&scrape(&addr), "rdb_raft_ticks_total");
    // A window to count its ticks in.
    tokio::time::sleep(SECS(10)).await;
    let ticks = get(&scrape(&addr), "rdb_raft_ticks_total") - before;
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    // A tick after each turn of 0.3 s that found one due: about 3 a second. Ticks left to the
    // runtime's timer came once the task had spent its budget of 128 receives: one in 38 s.
    assert!(
        ticks >= secs,
        "store 1 ticked {ticks} times in {secs:.1} s of turns of 300 ms"
    );
}
