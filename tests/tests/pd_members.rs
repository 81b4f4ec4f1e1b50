//! PD's own membership as real processes: a dead PD node is removed and replaced by a new one
//! that joins with `rdb-pd --join`, while timestamps, ids and the stores' heartbeats keep
//! working and stores given the old list of PD nodes find the new one; the membership survives
//! a restart of every PD node; stores learn PD's members and outlive the PD node they were
//! given; a removed PD node cannot get back in; and the guard rails refuse a reused id and
//! removing the last voter.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rdb_client::pd::Members;
use rdb_client::{Client, PdClient};
use rdb_tests::cluster::{bin_dir, explain, quick_options, TestCluster};
use rdb_tests::regions::{RegionCluster, Setup, Split};

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// Runs `rdb-cli --pd PD ARGS...` (15 s deadline).
fn cli(pd: &[String], args: &[&str]) -> Output {
    Command::new(bin_dir().join("rdb-cli"))
        .args(["--pd", &pd.join(","), "--timeout-ms", "15000"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run rdb-cli (cargo build --workspace --bins)")
}

/// Runs `rdb-cli` as [`cli`] and asserts it succeeded.
fn cli_ok(pd: &[String], args: &[&str]) -> String {
    let out = cli(pd, args);
    assert!(out.status.success(), "{args:?}: {}", explain(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// PD's members once `check` holds for them and a leader answers, waiting up to `timeout`.
async fn members_when(
    pd: &PdClient,
    what: &str,
    timeout: Duration,
    check: impl Fn(&Members) -> bool,
) -> Members {
    let deadline = Instant::now() + timeout;
    loop {
        let got = pd.get_members().await;
        match &got {
            Ok(m) if m.leader.is_some() && check(m) => return m.clone(),
            _ if Instant::now() >= deadline => {
                panic!("PD's members never showed {what} within {timeout:?}: last {got:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The voters' ids, and the learners'.
fn roles(m: &Members) -> (Vec<u64>, Vec<u64>) {
    let ids = |learner: bool| {
        m.members
            .iter()
            .filter(|x| x.learner == learner)
            .map(|x| x.id)
            .collect()
    };
    (ids(false), ids(true))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_pd_node_is_replaced_by_a_joining_one_while_pd_serves() {
    let mut c = RegionCluster::start_setup(
        3,
        Split {
            keys: 1_000_000,
            check_ms: 1000,
        },
        Setup {
            pd_nodes: 3,
            ..Setup::default()
        },
    );
    c.wait_regions(1, SECS(60)).await;
    // What the stores and this client were given: PD nodes 1, 2 and 3.
    let old: Vec<String> = c.pd_addrs().split(',').map(String::from).collect();
    let pd = PdClient::with_options(&old, quick_options()).expect("pd client");
    let before = pd.timestamp().await.expect("a timestamp");

    // PD node 2 dies for good (its disk is gone); the operator removes it.
    c.pd.kill(2);
    let out = cli_ok(&old, &["member", "remove", "2"]);
    assert!(
        !out.contains(&old[1]),
        "node 2 is gone from the answer: {out}"
    );
    members_when(&pd, "voters 1 and 3", SECS(20), |m| {
        roles(m) == (vec![1, 3], vec![])
    })
    .await;

    // A fresh node 4 is added as a learner and joins through nodes 1 and 3.
    let four = c.pd.new_joiner(&[1, 3]);
    assert_eq!(four, 4);
    let (peer, client) = (
        c.pd.nodes[3].peer_addr.clone(),
        c.pd.nodes[3].client_addr.clone(),
    );
    let add = [
        "member",
        "add",
        "4",
        "--learner",
        "--peer-addr",
        &peer,
        "--client-addr",
        &client,
    ];
    cli_ok(&old, &add);
    c.pd.restart(4);
    // Promoted once it caught up (refused, exit 2, while it holds less than 90% of the log;
    // 4 if PD is between leaders).
    let deadline = Instant::now() + SECS(60);
    loop {
        let out = cli(&old, &["member", "promote", "4"]);
        if out.status.success() {
            break;
        }
        assert!(
            matches!(out.status.code(), Some(2 | 4)),
            "{}",
            explain(&out)
        );
        assert!(
            Instant::now() < deadline,
            "node 4 never caught up: {}",
            explain(&out)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let m = members_when(&pd, "voters 1, 3 and 4", SECS(20), |m| {
        roles(m) == (vec![1, 3, 4], vec![])
    })
    .await;
    let listed = m.members.iter().find(|x| x.id == 4).expect("node 4 listed");
    assert_eq!(listed.client_addr, client, "{m:?}");
    assert_eq!(listed.peer_addr, peer, "{m:?}");

    // Timestamps and ids go on through the old list.
    let after = pd.timestamp().await.expect("a timestamp");
    assert!(after > before, "{after:?} after {before:?}");
    pd.alloc_ids(1).await.expect("an id");

    // Node 4 leads (a stopping leader hands over, so stop leaders until it does).
    make_lead(&mut c.pd, &pd, 4).await;
    // The stores, given only nodes 1, 2 and 3, find it: it hears region 1's leader in its
    // own term (heartbeats are kept per term), and every store is up.
    let pd4 = PdClient::with_options([client.clone()], quick_options()).expect("pd client");
    TestCluster::wait_until("region 1's heartbeat at PD node 4", SECS(30), || async {
        matches!(pd4.get_region_by_id(1).await, Ok(Some(r)) if r.leader.is_some())
    })
    .await;
    let stores = pd4.get_all_stores(true).await.expect("stores");
    assert_eq!(stores.len(), 3, "{stores:?}");
    assert!(
        stores
            .iter()
            .all(|s| s.state == rdb_client::pd::StoreState::Up),
        "{stores:?}"
    );
    assert_eq!(
        pd.get_members()
            .await
            .ok()
            .and_then(|m| m.leader)
            .map(|l| l.id),
        Some(4),
        "node 4 still leads"
    );
    // A client of the regions given the old list of PD nodes writes and reads.
    let kv = Client::with_pd(&old, c.options()).expect("client");
    kv.put("after-replacement", "yes").await.expect("put");
    assert_eq!(
        kv.get("after-replacement").await.expect("get").as_deref(),
        Some(b"yes".as_slice())
    );

    // Every PD node restarts: the membership is the one changed through the log, not the
    // file's (which still names 1, 2 and 3).
    let last = pd.timestamp().await.expect("a timestamp");
    for id in [1, 3, 4] {
        c.pd.kill(id);
    }
    for id in [1, 3, 4] {
        c.pd.restart(id);
    }
    let m = members_when(&pd, "voters 1, 3 and 4 after the restart", SECS(30), |m| {
        roles(m) == (vec![1, 3, 4], vec![])
    })
    .await;
    assert!(m.members.iter().all(|x| !x.client_addr.is_empty()), "{m:?}");
    let ts = pd.timestamp().await.expect("a timestamp after the restart");
    assert!(ts > last, "{ts:?} after {last:?}");
    let json: serde_json::Value =
        serde_json::from_str(&cli_ok(&old, &["-o", "json", "member", "list"])).expect("json");
    let ids: Vec<u64> = json["members"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["id"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(ids, [1, 3, 4], "{json}");
}

/// Stops PD's leader (it hands over) until node `want` leads.
async fn make_lead(pd_group: &mut TestCluster, pd: &PdClient, want: u64) {
    let deadline = Instant::now() + SECS(90);
    loop {
        let m = members_when(pd, "a leader", SECS(30), |_| true).await;
        let leader = m.leader.as_ref().map_or(0, |l| l.id);
        if leader == want {
            return;
        }
        assert!(Instant::now() < deadline, "node {want} never led: {m:?}");
        pd_group.terminate(leader);
        // A node stopped before it installed its signal handler (just started) dies of the
        // signal instead of handing over: then the others elect a leader.
        let stopped = pd_group.wait_exit(leader, SECS(10));
        assert!(stopped.is_some(), "node {leader} did not stop");
        pd_group.restart(leader);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stores_given_one_pd_node_learn_the_others_and_outlive_it() {
    let mut c = RegionCluster::with_pd_only(
        3,
        Split {
            keys: 1_000_000,
            check_ms: 1000,
        },
        Setup {
            pd_nodes: 3,
            pd_given: 1,
            ..Setup::default()
        },
    );
    // PD node 1 leads before the stores start, so no leader hint ever names another node.
    let all = c.pd.endpoints();
    let pd = PdClient::with_options(&all, quick_options()).expect("pd client");
    make_lead(&mut c.pd, &pd, 1).await;
    for i in 1..=3 {
        c.restart(i);
    }
    c.wait_regions(1, SECS(60)).await;

    // Node 1, the only PD node the stores were given, is gone: they reach the others, which
    // they learnt from PD's member list.
    c.pd.kill(1);
    let others = PdClient::with_options(&all[1..], quick_options()).expect("pd client");
    TestCluster::wait_until(
        "region 1's heartbeat at PD's new leader",
        SECS(30),
        || async { matches!(others.get_region_by_id(1).await, Ok(Some(r)) if r.leader.is_some()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_pd_node_cannot_get_back_in_and_changes_that_break_pd_are_refused() {
    let mut c = TestCluster::start_pd(3, "");
    let eps = c.endpoints();
    let pd = PdClient::with_options(&eps, quick_options()).expect("pd client");
    members_when(&pd, "a leader", SECS(30), |_| true).await;

    // A node that was not added cannot join: it exits 1 naming the command that adds it.
    let stranger = c.new_joiner(&[1, 2]);
    c.restart(stranger);
    let status = c.wait_exit(stranger, SECS(30));
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{status:?}");
    let log = std::fs::read_to_string(c.log_path(stranger)).unwrap_or_default();
    assert!(log.contains(&format!("member add {stranger} ")), "{log}");

    // Node 3 is down when it is removed.
    c.kill(3);
    cli_ok(&eps, &["member", "remove", "3"]);
    members_when(&pd, "voters 1 and 2", SECS(20), |m| {
        roles(m) == (vec![1, 2], vec![])
    })
    .await;
    // Its id is never used again, and a current member's id is refused.
    let (peer, client) = (c.nodes[2].peer_addr.clone(), c.nodes[2].client_addr.clone());
    for (id, why) in [("3", "cannot be used again"), ("1", "already")] {
        let out = cli(
            &eps,
            &[
                "member",
                "add",
                id,
                "--peer-addr",
                &peer,
                "--client-addr",
                &client,
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(why), "{}", explain(&out));
        assert_eq!(stderr.lines().count(), 1, "one line: {}", explain(&out));
    }

    // Started again, it learns from its peers that it was removed and exits 0...
    c.restart(3);
    let status = c.wait_exit(3, SECS(30));
    assert!(status.is_some_and(|s| s.success()), "node 3: {status:?}");
    let log = std::fs::read_to_string(c.log_path(3)).unwrap_or_default();
    assert!(log.contains("was removed from the group"), "{log}");
    // ...and refuses to start once more.
    c.restart(3);
    let status = c.wait_exit(3, SECS(30));
    assert_eq!(status.and_then(|s| s.code()), Some(1), "node 3: {status:?}");
    let log = std::fs::read_to_string(c.log_path(3)).unwrap_or_default();
    assert!(log.contains("will not serve again"), "{log}");
    // The group serves throughout.
    pd.timestamp().await.expect("a timestamp");

    // A live node removed (the leader hands over first when it is the one) stops with exit 0.
    cli_ok(&eps, &["member", "remove", "2"]);
    let status = c.wait_exit(2, SECS(30));
    assert!(status.is_some_and(|s| s.success()), "node 2: {status:?}");
    members_when(&pd, "voter 1 alone", SECS(20), |m| {
        roles(m) == (vec![1], vec![])
    })
    .await;
    // The last voter stays.
    let out = cli(&eps, &["member", "remove", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    pd.timestamp().await.expect("a timestamp");
}
