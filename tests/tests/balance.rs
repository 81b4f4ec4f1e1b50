//! PD's balance and placement against real processes (specs/015-scheduling): a store added to
//! a running cluster takes regions and leaderships while writers run and regions split, and
//! every acknowledged write stays, also when PD's leader changes in the middle of the moves;
//! a new store that dies while it catches up leaves every region whole; replicas go to
//! stores apart by their labels.

use std::time::{Duration, Instant};

use rdb_client::pd::Store;
use rdb_tests::regions::{key, write_rounds, RegionCluster, Setup, Split};

/// PD's view of the stores that are not tombstones.
async fn stores(c: &RegionCluster) -> Vec<Store> {
    c.pd_client().get_all_stores(true).await.unwrap_or_default()
}

/// What PD's operator list says, for a failure message.
fn operators(c: &RegionCluster) -> String {
    let o = c.pd_cli(&["operator", "list"]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_store_takes_regions_and_leaderships_while_writes_go_on() {
    a_new_store_takes_its_share(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moves_survive_a_pd_leader_change_in_their_middle() {
    a_new_store_takes_its_share(3).await;
}

/// Three stores with regions, then a fourth: it takes its share of regions and leaderships
/// while writers run. With three PD nodes, PD's leader is killed once the first move runs; the
/// new leader finishes the job, and no region keeps a peer a lost operator added.
async fn a_new_store_takes_its_share(pd_nodes: usize) {
    let mut c = RegionCluster::with_pd_only(
        4,
        Split {
            keys: 40,
            check_ms: 300,
        },
        Setup {
            pd_tables: "[pd]\nstore_down_after_secs = 3\n".into(),
            pd_nodes,
            ..Setup::default()
        },
    );
    for i in 1..=3 {
        c.restart(i);
    }
    let client = c.client();
    let mut written = write_rounds(&client, 400, 1, 4).await;
    let regions = c.wait_regions(6, Duration::from_secs(60)).await.len();

    // Store 4 joins while writers go on, writing twice as many keys: regions split while
    // operators move them.
    c.restart(4);
    let new_id = c.store_id(4).await;
    let writer = {
        let client = client.clone();
        tokio::spawn(async move { write_rounds(&client, 800, 1, 2).await })
    };
    if pd_nodes > 1 {
        // PD's leader dies with the first move on its way.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !c.pd_client().operators().await.is_ok_and(|ops| {
            ops.iter()
                .any(|o| o.kind == "balance-region" && o.status == "running")
        }) {
            assert!(
                Instant::now() < deadline,
                "no move started: {}",
                operators(&c)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let leader = c.pd_client().get_members().await.expect("members").leader;
        c.pd.kill(leader.expect("a PD leader").id);
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last;
    loop {
        let s = stores(&c).await;
        let counts: Vec<u64> = s.iter().map(|s| s.region_count).collect();
        let new = s.iter().find(|s| s.id == new_id);
        let spread = counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0);
        last = format!("{s:?}");
        // Region balance: within 2 of each other with store 4 holding some; leader balance:
        // store 4 leads some; every region whole again (three voters, no learner left).
        let whole = c
            .regions()
            .await
            .iter()
            .all(|r| r.region.peers.len() == 3 && r.region.peers.iter().all(|p| !p.learner));
        if s.len() == 4
            && spread <= 2
            && whole
            && new.is_some_and(|n| n.region_count >= 2 && n.leader_count >= 1)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "store {new_id} was not given its share within 90 s ({regions} regions): {last}\n{}\n{:?}",
            operators(&c),
            c.regions().await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Later rounds overwrite the first: the last acknowledged value is what a key must hold.
    for (k, w) in writer.await.expect("writer") {
        written.insert(k, w);
    }
    for i in 0..800 {
        let k = key(i);
        let got = client
            .get(k.as_str())
            .await
            .expect("get")
            .map(|v| String::from_utf8_lossy(&v).to_string());
        let kw = &written[&k];
        assert!(
            kw.allows(got.as_deref()),
            "{k} holds {got:?}, written {kw:?}"
        );
    }
    c.assert_replicas_agree().await;
    let ops = operators(&c);
    assert!(
        ops.contains("balance-region") && ops.contains("finished"),
        "operator list shows no finished region move: {ops}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_is_replaced_on_a_store_apart_by_labels() {
    // Zones: store 1 a, 2 b, 3 c, 4 c, 5 b. Region 1 starts on stores 1-3.
    let mut c = RegionCluster::with_pd_only(
        5,
        Split {
            keys: 1_000_000,
            check_ms: 1_000,
        },
        Setup {
            pd_tables: "[pd]\nstore_down_after_secs = 3\nmax_store_down_secs = 4\n\
                        location_labels = [\"zone\", \"host\"]\n"
                .into(),
            store_labels: ["a", "b", "c", "c", "b"]
                .iter()
                .enumerate()
                .map(|(i, z)| format!("zone={z},host=h{}", i + 1))
                .collect(),
            ..Setup::default()
        },
    );
    for i in 1..=3 {
        c.restart(i);
    }
    let client = c.client();
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..20 {
        while client.put(key(i), "v").await.is_err() {
            assert!(Instant::now() < deadline, "the cluster never took writes");
        }
    }
    c.wait_regions(1, Duration::from_secs(30)).await;
    for i in 4..=5 {
        c.restart(i);
    }
    let ids = [
        c.store_id(1).await,
        c.store_id(2).await,
        c.store_id(3).await,
        c.store_id(4).await,
        c.store_id(5).await,
    ];
    let o = c.pd_cli(&["store", "list"]);
    let list = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        list.contains("zone=b,host=h5") && list.contains("zone=a,host=h1"),
        "store list shows no labels: {list}"
    );

    // Zone b's store is lost: its replica goes to the other store in zone b (store 5), not
    // to store 4, which would put two replicas in zone c.
    c.kill(2);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = c.regions().await;
        let on: Vec<u64> = r
            .first()
            .map(|r| r.region.peers.iter().map(|p| p.store_id).collect())
            .unwrap_or_default();
        if !on.contains(&ids[1]) && on.len() == 3 {
            assert!(
                on.contains(&ids[4]) && !on.contains(&ids[3]),
                "region 1 is on stores {on:?}; stores by number: {ids:?}\n{}",
                operators(&c)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "region 1 not repaired: {r:?}\n{}",
            operators(&c)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..20 {
        let got = client.get(key(i)).await.expect("get");
        assert_eq!(got.as_deref(), Some(&b"v"[..]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_store_that_dies_while_it_catches_up_leaves_every_region_whole() {
    let mut c = RegionCluster::with_pd_only(
        4,
        Split {
            keys: 40,
            check_ms: 300,
        },
        Setup {
            pd_tables: "[pd]\nstore_down_after_secs = 3\nmax_store_down_secs = 6\n".into(),
            ..Setup::default()
        },
    );
    for i in 1..=3 {
        c.restart(i);
    }
    let client = c.client();
    let written = write_rounds(&client, 300, 1, 4).await;
    c.wait_regions(5, Duration::from_secs(60)).await;
    c.restart(4);
    let new_id = c.store_id(4).await;
    // Killed as soon as it got its first learner.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = c.regions().await;
        if r.iter()
            .any(|r| r.region.peers.iter().any(|p| p.store_id == new_id))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "store {new_id} got no peer: {}",
            operators(&c)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.kill(4);
    // Its learners go at once (it is down), a peer already promoted is replaced once it is
    // gone: every region ends with three voters on live stores.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let r = c.regions().await;
        let whole = r.iter().all(|r| {
            r.region.peers.len() == 3
                && r.region
                    .peers
                    .iter()
                    .all(|p| !p.learner && p.store_id != new_id)
        });
        if whole && !r.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "regions not whole without store {new_id}: {r:?}\n{}",
            operators(&c)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (k, w) in &written {
        let got = client
            .get(k.as_str())
            .await
            .expect("get")
            .map(|v| String::from_utf8_lossy(&v).to_string());
        assert!(w.allows(got.as_deref()), "{k} holds {got:?}, written {w:?}");
    }
    c.assert_replicas_agree().await;
}
