//! A region's peers changed by an operator (specs/009-regions, "Membership of a region")
//! against real processes: one rdb-pd node and four `rdb-server --pd` stores; `rdb-cli --pd
//! ADDR member ... --region 1` and `leader transfer --region 1` move region 1 from one store
//! to the fourth through the region's own log.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rdb_client::MemberRole;
use rdb_tests::cluster::bin_dir;
use rdb_tests::regions::{RegionCluster, Split};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Runs `rdb-cli --pd <the cluster's PD> ARGS...`.
fn pd_cli(c: &RegionCluster, args: &[&str]) -> Output {
    Command::new(bin_dir().join("rdb-cli"))
        .args(["--pd", &c.pd_addr(), "--timeout-ms", "10000"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run rdb-cli (cargo build --workspace --bins)")
}

fn explain(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `args` until it exits 0 (a promotion waits for the learner to catch up, a removal of
/// the leader for the hand-over), or fails the test at the deadline.
fn until_ok(c: &RegionCluster, args: &[&str], within: Duration) -> Output {
    let deadline = Instant::now() + within;
    loop {
        let o = pd_cli(c, args);
        if o.status.success() {
            return o;
        }
        assert!(
            Instant::now() < deadline,
            "{args:?} never succeeded: {}",
            explain(&o)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A store's gRPC health ("" service), `None` if it does not answer.
async fn health(addr: &str) -> Option<i32> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .ok()?;
    let r = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()?;
    Some(r.into_inner().status)
}

/// Waits until store `addr` reports `want` as its health.
async fn wait_health(addr: &str, want: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = health(addr).await;
        if got == Some(want as i32) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "store {addr}: health {got:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_moves_a_region_to_a_new_store_and_every_key_stays() {
    let c = RegionCluster::start(
        4,
        Split {
            keys: 1_000_000,
            check_ms: 1_000,
        },
    );
    let client = c.client();
    let regions = rdb_client::Client::with_pd([c.pd_addr()], c.options()).expect("client");
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..60 {
        let k = format!("key{i:03}");
        while client.put(k.as_str(), format!("v{i}")).await.is_err() {
            assert!(Instant::now() < deadline, "the cluster never took writes");
        }
    }
    let region = c.wait_regions(1, Duration::from_secs(30)).await.remove(0);
    assert_eq!(region.region.id, 1);
    let stores = c.pd_client().get_all_stores(true).await.expect("stores");
    let spare = stores
        .iter()
        .map(|s| s.id)
        .find(|id| !region.region.peers.iter().any(|p| p.store_id == *id))
        .expect("a store without a peer of region 1");
    let old = region.region.peers[0];

    // The region's peers, as its leader sees them: three voters, one of them leading.
    let o = pd_cli(&c, &["member", "list", "--region", "1"]);
    assert!(o.status.success(), "{}", explain(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(out.lines().count(), 4, "{out}");
    assert_eq!(out.matches("(leader)").count(), 1, "{out}");

    // Mistakes get a reason and a non-zero exit: a store that hosts a peer already, a region
    // PD does not know, a region named without --pd.
    let taken = old.store_id.to_string();
    let o = pd_cli(
        &c,
        &[
            "member",
            "add",
            "--region",
            "1",
            "--store",
            &taken,
            "--learner",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", explain(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already hosts a peer"),
        "{}",
        explain(&o)
    );
    let o = pd_cli(&c, &["member", "list", "--region", "99"]);
    assert_eq!(o.status.code(), Some(3), "{}", explain(&o));
    let o = Command::new(bin_dir().join("rdb-cli"))
        .args([
            "--endpoints",
            &c.addrs[0],
            "member",
            "list",
            "--region",
            "1",
        ])
        .output()
        .expect("rdb-cli");
    assert_eq!(o.status.code(), Some(2), "{}", explain(&o));

    // A learner on the spare store, promoted once it caught up.
    let spare_arg = spare.to_string();
    let o = pd_cli(
        &c,
        &[
            "member",
            "add",
            "--region",
            "1",
            "--store",
            &spare_arg,
            "--learner",
        ],
    );
    assert!(o.status.success(), "{}", explain(&o));
    let new = {
        let mut found = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        while found.is_none() {
            let list = regions.region_members(1).await;
            found = list.as_ref().ok().and_then(|l| {
                l.members
                    .iter()
                    .find(|m| m.store_id == spare && m.role == MemberRole::Learner)
                    .map(|m| m.id)
            });
            assert!(
                found.is_some() || Instant::now() < deadline,
                "no learner on store {spare}: {list:?}"
            );
        }
        found.unwrap_or_default()
    };
    let new_arg = new.to_string();
    until_ok(
        &c,
        &["member", "promote", "--region", "1", &new_arg],
        Duration::from_secs(30),
    );

    // Leadership to the new peer, then the old peer out.
    until_ok(
        &c,
        &["leader", "transfer", "--region", "1", &new_arg],
        Duration::from_secs(30),
    );
    assert_eq!(
        regions.region_members(1).await.expect("members").leader_id,
        new
    );
    let old_arg = old.id.to_string();
    until_ok(
        &c,
        &["member", "remove", "--region", "1", &old_arg],
        Duration::from_secs(30),
    );

    // PD hears of the new peers from the leader; the old store drops its peer.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c.regions().await.remove(0);
        let on: Vec<u64> = r.region.peers.iter().map(|p| p.store_id).collect();
        if on.contains(&spare) && !on.contains(&old.store_id) && on.len() == 3 {
            assert!(r.region.peers.iter().all(|p| !p.learner), "{r:?}");
            break;
        }
        assert!(Instant::now() < deadline, "PD still has region 1 as {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let i = c
        .addrs
        .iter()
        .position(|a| {
            stores
                .iter()
                .any(|s| s.id == old.store_id && &s.address == a)
        })
        .expect("the old store's address")
        + 1;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(c.log_path(i))
        .unwrap_or_default()
        .contains("region peer removed from this store")
    {
        assert!(
            Instant::now() < deadline,
            "store {} never dropped its peer",
            old.store_id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every key reads back, writes go on, and the three replicas agree.
    for i in 0..60 {
        let k = format!("key{i:03}");
        assert_eq!(
            client.get(k.as_str()).await.expect("get"),
            Some(format!("v{i}").into_bytes()),
            "{k}"
        );
    }
    client
        .put("after", "move")
        .await
        .expect("a write after the move");
    let checks = c.assert_replicas_agree().await;
    let nodes = &checks[0].report.as_ref().expect("report").nodes;
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().any(|n| n.node_id == Some(spare)));

    // `store list`: each store's regions and leaders from PD's map, and its disk.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = pd_cli(&c, &["-o", "json", "store", "list"]);
        assert!(o.status.success(), "{}", explain(&o));
        let list: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
        let of = |id: u64| {
            list.as_array()
                .into_iter()
                .flatten()
                .find(|s| s["id"] == id)
                .cloned()
                .unwrap_or_default()
        };
        let (moved_to, moved_from) = (of(spare), of(old.store_id));
        let done = moved_to["region_count"] == 1
            && moved_to["leader_count"] == 1
            && moved_from["region_count"] == 0
            && moved_to["capacity_bytes"].as_u64().unwrap_or(0) > 0
            && moved_to["used_bytes"].as_u64().unwrap_or(0) > 0;
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "store list: {list}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // `status` with --pd: every store, and each store's regions with role, term and lag.
    let o = pd_cli(&c, &["status"]);
    assert!(o.status.success(), "{}", explain(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(out.matches("store (1 regions)").count(), 3, "{out}");
    assert_eq!(out.matches("store (0 regions)").count(), 1, "{out}");
    let spare_table = out
        .split(&format!("regions of store {spare}:"))
        .nth(1)
        .unwrap_or_else(|| panic!("no table for store {spare}: {out}"));
    let row = spare_table
        .lines()
        .find(|l| l.starts_with("1 "))
        .unwrap_or_default();
    assert!(
        row.contains("leader") && row.contains(&format!("peer {new} (store {spare})")),
        "{out}"
    );

    // Health: every store serves; one whose region lost its quorum does not.
    for a in &c.addrs {
        wait_health(a, ServingStatus::Serving).await;
    }
    let o = pd_cli(&c, &["endpoint", "health", "--cluster"]);
    assert!(o.status.success(), "{}", explain(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    for a in &c.addrs {
        assert!(
            out.lines()
                .any(|l| l.starts_with(a.as_str()) && l.contains(" true ")),
            "{out}"
        );
    }
    let mut c = c;
    let spare_i = c
        .addrs
        .iter()
        .position(|a| stores.iter().any(|s| s.id == spare && &s.address == a))
        .expect("the spare store's address")
        + 1;
    let others: Vec<usize> = (1..=4).filter(|&j| j != spare_i && j != i).collect();
    for &j in &others {
        c.kill(j);
    }
    wait_health(&c.addrs[spare_i - 1], ServingStatus::NotServing).await;
    wait_health(&c.addrs[i - 1], ServingStatus::Serving).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopping_store_hands_the_leadership_of_its_regions_over() {
    let mut c = RegionCluster::start(
        3,
        Split {
            keys: 1_000_000,
            check_ms: 1_000,
        },
    );
    let client = c.client();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.put("k", "v").await.is_err() {
        assert!(Instant::now() < deadline, "the cluster never took a write");
    }
    let region = c.wait_regions(1, Duration::from_secs(30)).await.remove(0);
    let leader = region
        .leader
        .expect("wait_regions waits for a leader")
        .store_id;
    let mut leading = 0;
    for i in 1..=3 {
        if c.store_id(i).await == leader {
            leading = i;
        }
    }
    assert_ne!(leading, 0, "store {leader} is none of the three");
    let status = c.terminate(leading, Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    // It handed region 1 over before it stopped (no election timeout for its clients).
    let log = std::fs::read_to_string(c.log_path(leading)).expect("log");
    assert!(log.contains("stopping: handing leadership over"), "{log}");
    assert!(log.contains("leadership handed over"), "{log}");
    // And the region goes on: its new leader takes writes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.put("k", "after").await.is_err() {
        assert!(Instant::now() < deadline, "no write after the stop");
    }
}
