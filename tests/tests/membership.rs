//! Membership changes on real processes: a dead node replaced by a new one (added as a
//! learner, caught up, promoted, the dead one removed) while writes go on; removing the leader;
//! a removed node that comes back; kill -9 of the leader in the middle of a change.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdb_client::{Client, MemberChange, MemberList, MemberRole, ReadConsistency};
use rdb_tests::cluster::{Settings, TestCluster};

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// Small snapshot thresholds: a new node catches up from a snapshot plus the log.
fn small_log() -> Settings {
    Settings("snapshot_threshold = 200\ncatch_up_entries = 50\n".into())
}

/// Writers that record every acknowledged write (key -> value) until stopped.
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<String, String>>>,
    errors: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    fn start(client: &Client, n: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..n)
            .map(|w| {
                let (client, stop, acked, errors) =
                    (client.clone(), stop.clone(), acked.clone(), errors.clone());
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let (k, v) = (format!("w{w}-{i:06}"), format!("v{i}"));
                        match client.put(k.clone(), v.clone()).await {
                            Ok(_) => {
                                acked.lock().unwrap().insert(k, v);
                            }
                            Err(e) => errors.lock().unwrap().push(format!("{k}: {e}")),
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        Writers {
            stop,
            acked,
            errors,
            tasks,
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn wait_for_more(&self, n: usize) {
        let before = self.acked();
        let acked = self.acked.clone();
        TestCluster::wait_until("writes to go on", SECS(30), || {
            let now = acked.lock().unwrap().len();
            async move { now >= before + n }
        })
        .await;
    }

    async fn stop(self) -> (BTreeMap<String, String>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("writer");
        }
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        let errors = std::mem::take(&mut *self.errors.lock().unwrap());
        (acked, errors)
    }
}

/// Every acknowledged write reads back with its value through `client` (linearizable).
async fn assert_all_readable(client: &Client, acked: &BTreeMap<String, String>) {
    for (k, v) in acked {
        let got = client
            .get_with(k.clone(), ReadConsistency::Linearizable)
            .await
            .unwrap_or_else(|e| panic!("reading {k}: {e}"));
        assert_eq!(
            got.as_deref(),
            Some(v.as_bytes()),
            "acknowledged write {k} lost"
        );
    }
}

async fn wait_caught_up(client: &Client, id: u64) -> MemberList {
    let deadline = tokio::time::Instant::now() + SECS(60);
    loop {
        if let Ok(list) = client.member_list().await {
            if list
                .get(id)
                .is_some_and(|m| m.match_index * 10 >= list.commit_index * 9)
            {
                return list;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {id} did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn voters(list: &[rdb_client::MemberInfo]) -> Vec<u64> {
    list.iter()
        .filter(|m| m.role == MemberRole::Voter)
        .map(|m| m.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_replaced_by_a_new_one_while_writes_go_on() {
    let mut c = TestCluster::start_with(3, small_log());
    c.wait_leader(SECS(20)).await;
    let l = c.wait_leader(SECS(20)).await;
    let dead = if l == 3 { 2 } else { 3 };
    let alive: Vec<u64> = (1..=3).filter(|&id| id != dead).collect();
    let client = c.client_of(&alive);
    let writers = Writers::start(&client, 4);
    writers.wait_for_more(300).await;

    // The disk of `dead` is lost for good.
    c.kill(dead);
    std::fs::remove_dir_all(c.data_dir(dead)).expect("delete the dead node's data");
    writers.wait_for_more(100).await;

    let new = c.new_joiner(&alive);
    let (peer_addr, client_addr) = {
        let n = &c.nodes[(new - 1) as usize];
        (n.peer_addr.clone(), n.client_addr.clone())
    };
    let members = client
        .change_members(&[MemberChange::AddLearner {
            id: new,
            peer_addr,
            client_addr,
        }])
        .await
        .expect("add the learner");
    assert!(members
        .iter()
        .any(|m| m.id == new && m.role == MemberRole::Learner));
    // Promoting it before it has the log is refused.
    let early = client.change_members(&[MemberChange::Promote(new)]).await;
    assert!(
        matches!(&early, Err(rdb_client::Error::InvalidArgument(m)) if m.contains("not caught up")),
        "{early:?}"
    );
    c.restart(new);
    wait_caught_up(&client, new).await;
    let members = client
        .change_members(&[MemberChange::Promote(new)])
        .await
        .expect("promote");
    assert_eq!(voters(&members), vec![1, 2, 3, new]);
    let members = client
        .change_members(&[MemberChange::Remove(dead)])
        .await
        .expect("remove the dead node");
    let mut expected: Vec<u64> = alive.clone();
    expected.push(new);
    assert_eq!(voters(&members), expected);
    writers.wait_for_more(100).await;

    // The group of the two old nodes and the new one goes on without any other: stop one old
    // node, and writes still commit (the new node counts towards the quorum).
    let (acked, errors) = writers.stop().await;
    let now = c.client_of(&[alive[0], alive[1], new]);
    c.kill(alive[0]);
    now.put("after", "replacement")
        .await
        .expect("a write with the new voter in the quorum");
    c.restart(alive[0]);
    assert_all_readable(&now, &acked).await;
    assert!(
        errors.len() < acked.len() / 20,
        "too many failed writes: {errors:?}"
    );
    let report = c
        .client_of(&[alive[0], alive[1], new])
        .check()
        .await
        .expect("check");
    assert!(report.consistent(), "replicas differ: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_stops_and_never_serves_again() {
    let mut c = TestCluster::start(4);
    let l = c.wait_leader(SECS(20)).await;
    // Removing the leader: it hands over first (the client retries), then leaves.
    let client = c.client();
    client.put("k", "v").await.expect("put");
    let members = client
        .change_members(&[MemberChange::Remove(l)])
        .await
        .expect("remove the leader");
    assert!(!members.iter().any(|m| m.id == l), "{members:?}");
    let status = c
        .wait_exit(l, SECS(20))
        .expect("the removed leader did not stop");
    assert!(!status.success(), "a removed node exits with an error");
    let rest: Vec<u64> = (1..=3).filter(|&id| id != l).collect();
    let rest_client = c.client_of(&rest);
    rest_client
        .put("k2", "v2")
        .await
        .expect("the two left serve");

    // A removed node that comes back (it missed its removal: it was down) is told so by the
    // others and stops; restarted again, it refuses to start at all.
    let down = rest[1];
    c.kill(down);
    rest_client
        .change_members(&[MemberChange::Remove(down)])
        .await
        .expect("remove a node that is down");
    c.restart(down);
    let status = c
        .wait_exit(down, SECS(20))
        .expect("a removed node that came back kept running");
    assert!(!status.success());
    let log = std::fs::read_to_string(c.log_path(down)).unwrap();
    assert!(log.contains("removed from the cluster"), "{log}");
    c.restart(down);
    let status = c
        .wait_exit(down, SECS(20))
        .expect("a removed node started again");
    assert!(!status.success());
    let log = std::fs::read_to_string(c.log_path(down)).unwrap();
    assert!(log.contains("will not serve again"), "{log}");
    // The last node alone is the whole group now.
    let last = c.client_of(&[rest[0]]);
    last.put("k3", "v3")
        .await
        .expect("the last voter commits alone");
    assert_eq!(last.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    // A removed id cannot come back.
    let again = last
        .change_members(&[MemberChange::AddLearner {
            id: down,
            peer_addr: "127.0.0.1:1".into(),
            client_addr: "127.0.0.1:2".into(),
        }])
        .await;
    assert!(
        matches!(&again, Err(rdb_client::Error::InvalidArgument(m)) if m.contains("cannot be used again")),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_survives_kill_9_of_the_leader_and_every_node_agrees() {
    let mut c = TestCluster::start(3);
    let l = c.wait_leader(SECS(20)).await;
    let client = c.client();
    client.put("k", "v").await.expect("put");
    let new = c.new_joiner(&[1, 2, 3]);
    let (peer_addr, client_addr) = {
        let n = &c.nodes[(new - 1) as usize];
        (n.peer_addr.clone(), n.client_addr.clone())
    };
    let change = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .change_members(&[MemberChange::AddLearner {
                    id: new,
                    peer_addr,
                    client_addr,
                }])
                .await
        })
    };
    // Kill the leader while the change is in flight (or just done): the client retries on the
    // next leader, and the change is in effect exactly once.
    tokio::time::sleep(Duration::from_millis(5)).await;
    c.kill(l);
    let members = change.await.expect("task").expect("the change, retried");
    assert!(members.iter().any(|m| m.id == new), "{members:?}");
    c.restart(l);
    c.restart(new);
    // Every node, the restarted leader and the learner included, applies the same membership.
    for id in 1..=4u64 {
        TestCluster::wait_until(&format!("node {id} to see the learner"), SECS(30), || {
            let cl = c.client_for(id);
            async move {
                cl.member_list_local().await.is_ok_and(|m| {
                    m.get(new).is_some_and(|x| x.role == MemberRole::Learner)
                        && voters(&m.members) == vec![1, 2, 3]
                })
            }
        })
        .await;
    }
    let from_learner = c.client_for(new);
    TestCluster::wait_until("the learner to have the data", SECS(30), || {
        let cl = from_learner.clone();
        async move {
            cl.get_with("k", ReadConsistency::Serializable)
                .await
                .is_ok_and(|v| v.as_deref() == Some(&b"v"[..]))
        }
    })
    .await;
}

/// A change that cannot commit (two of three voters down) fails within the client's one
/// deadline: the check whether it took effect after all shares that deadline instead of
/// starting a second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_cannot_commit_fails_within_one_deadline() {
    let mut c = TestCluster::start(3);
    let l = c.wait_leader(SECS(10)).await;
    for id in (1..=3).filter(|&i| i != l) {
        c.kill(id);
    }
    let opts = rdb_client::Options {
        deadline: SECS(3),
        ..rdb_tests::cluster::quick_options()
    };
    let client = Client::with_options(vec![c.nodes[(l - 1) as usize].client_addr.clone()], opts)
        .expect("client");
    let started = std::time::Instant::now();
    let r = client
        .change_members(&[MemberChange::AddLearner {
            id: 9,
            peer_addr: "127.0.0.1:1".into(),
            client_addr: "127.0.0.1:2".into(),
        }])
        .await;
    let took = started.elapsed();
    assert!(r.is_err(), "a minority committed a change: {r:?}");
    // One deadline (3 s) plus slack for the last attempt; two deadlines would be 6 s.
    assert!(took < Duration::from_millis(4500), "took {took:?}");
}

/// `member add` with another member's address (or the same address twice) is refused with the
/// cause: the new node would take that member's traffic, and every later join would fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_at_another_member_s_address_is_refused() {
    let c = TestCluster::start(3);
    c.wait_leader(SECS(20)).await;
    let fresh = format!("127.0.0.1:{}", rdb_tests::cluster::free_port());
    let taken_peer = c.nodes[0].peer_addr.clone();
    let taken_client = c.nodes[1].client_addr.clone();
    let add = |peer: &str, client: &str| {
        std::process::Command::new(rdb_tests::cluster::bin_dir().join("rdb-cli"))
            .arg("--endpoints")
            .arg(c.endpoints().join(","))
            .args(["member", "add", "4", "--learner", "--peer-addr", peer])
            .args(["--client-addr", client])
            .output()
            .expect("rdb-cli")
    };
    for (peer, client, says) in [
        (
            taken_peer.as_str(),
            fresh.as_str(),
            "is node 1's peer address",
        ),
        (
            fresh.as_str(),
            taken_client.as_str(),
            "is node 2's client address",
        ),
        (
            fresh.as_str(),
            fresh.as_str(),
            "each needs a port of its own",
        ),
    ] {
        let o = add(peer, client);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
    let list = c.client().member_list().await.expect("member list");
    assert_eq!(list.members.len(), 3, "{list:?}");
}
