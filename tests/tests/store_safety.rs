//! What a PD-mode store must survive from outside: forged peer messages (raw gRPC to its peer
//! port), PD being away while it restarts, and a peer that comes back on other ports.

use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::prelude::{Entry, Message, MessageType};
use rdb_client::{Client, ReadConsistency};
use rdb_proto::peer::peer_client::PeerClient;
use rdb_proto::peer::{PeerKind, RaftBatch, SnapshotChunk, SnapshotHeader};
use rdb_tests::cluster::{free_port, TestCluster};
use rdb_tests::regions::{RegionCluster, Split};

/// Regions never split here.
const NO_SPLIT: Split = Split {
    keys: 1_000_000_000,
    check_ms: 1_000,
};

/// Writes `k{from}..k{to}` (value `v{i}`) through `client`, each acknowledged.
async fn write(client: &Client, from: usize, to: usize) {
    for i in from..to {
        client
            .put(format!("k{i:04}"), format!("v{i}"))
            .await
            .unwrap_or_else(|e| panic!("put k{i:04}: {e}"));
    }
}

/// Waits until `client` reads `k{i}` = `v{i}` for every `i` in `from..to`, serializably (from
/// the one store it names), within `timeout`.
async fn wait_holds(client: &Client, from: usize, to: usize, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    for i in from..to {
        loop {
            let got = client
                .get_with(format!("k{i:04}"), ReadConsistency::Serializable)
                .await;
            if matches!(&got, Ok(Some(v)) if v == format!("v{i}").as_bytes()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: k{i:04} not there within {timeout:?}: {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The PD cluster id store `i` stamps its messages with, from its log.
fn cluster_id(c: &RegionCluster, i: usize) -> u64 {
    let log = std::fs::read_to_string(c.log_path(i)).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains("serving"))
        .find_map(|l| {
            let rest = l.split("cluster_id: ").nth(1)?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("store {i} logged no cluster id:\n{log}"))
}

fn raft_msg(ty: MessageType, from: u64, to: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(ty);
    m.from = from;
    m.to = to;
    m.term = term;
    m
}

fn batch(cluster_id: u64, from: u64, to: u64, region: u64, m: &Message) -> RaftBatch {
    RaftBatch {
        cluster_id,
        from,
        to,
        msgs: vec![m.write_to_bytes().expect("encode")],
        region_ids: vec![region],
        kind: PeerKind::Store as i32,
    }
}

/// Sends one batch on a fresh stream to `addr`; the call's outcome.
async fn send(addr: &str, b: RaftBatch) -> Result<(), tonic::Status> {
    let mut peer = PeerClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to the peer port");
    peer.raft(tokio_stream::iter(vec![b])).await.map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_peer_messages_neither_end_a_store_nor_change_its_data() {
    let mut c = RegionCluster::start(3, NO_SPLIT);
    let client = c.client();
    write(&client, 0, 20).await;
    let pd = c.pd_client();
    let stores = pd.get_all_stores(true).await.expect("stores");
    let store = |i: usize| {
        stores
            .iter()
            .find(|s| s.address == c.addrs[i - 1])
            .map(|s| s.id)
            .expect("store registered")
    };
    let (target, other) = (store(1), store(2));
    let region = pd
        .get_region_by_id(1)
        .await
        .expect("region 1")
        .expect("region 1 exists")
        .region;
    let peer_of = |s: u64| {
        region
            .peers
            .iter()
            .find(|p| p.store_id == s)
            .expect("peer")
            .id
    };
    let cluster = cluster_id(&c, 1);
    let addr = c.peer_addrs[0].clone();

    // As found: a heartbeat for a region that does not exist, committing past an empty log.
    let mut hb = raft_msg(MessageType::MsgHeartbeat, 1001, 1000, 1);
    hb.commit = 1;
    send(&addr, batch(cluster, other, target, 999, &hb))
        .await
        .expect("delivered (and dropped by the store)");
    // A heartbeat for region 1 at a far higher term, committing past the end of its log.
    let mut hb = raft_msg(
        MessageType::MsgHeartbeat,
        peer_of(other),
        peer_of(target),
        100,
    );
    hb.commit = 1 << 40;
    send(&addr, batch(cluster, other, target, 1, &hb))
        .await
        .expect("delivered");
    // An append whose entries are not contiguous, and one that rewrites committed entries.
    let mut app = raft_msg(MessageType::MsgAppend, peer_of(other), peer_of(target), 100);
    app.index = 1;
    app.log_term = 5;
    app.set_entries(
        vec![Entry {
            index: 1_000,
            term: 100,
            ..Default::default()
        }]
        .into(),
    );
    send(&addr, batch(cluster, other, target, 1, &app))
        .await
        .expect("delivered");
    // A local message type: a proposal of arbitrary bytes.
    let mut prop = raft_msg(MessageType::MsgPropose, peer_of(other), peer_of(target), 0);
    prop.set_entries(
        vec![Entry {
            data: b"garbage".to_vec().into(),
            ..Default::default()
        }]
        .into(),
    );
    send(&addr, batch(cluster, other, target, 1, &prop))
        .await
        .expect("delivered");
    // From another cluster, or another kind of process: refused outright.
    let mut deposing = raft_msg(MessageType::MsgAppend, peer_of(other), peer_of(target), 100);
    deposing.index = 5;
    deposing.log_term = 5;
    let refused = send(&addr, batch(cluster ^ 0x5a5a, other, target, 1, &deposing)).await;
    assert_eq!(
        refused.map_err(|s| s.code()),
        Err(tonic::Code::PermissionDenied),
        "a batch of another cluster"
    );
    let mut as_node = batch(cluster, other, target, 1, &deposing);
    as_node.kind = PeerKind::Node as i32;
    assert_eq!(
        send(&addr, as_node).await.map_err(|s| s.code()),
        Err(tonic::Code::PermissionDenied),
        "a batch from a config-file node"
    );
    let mut peer = PeerClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let snap = raft_msg(
        MessageType::MsgSnapshot,
        peer_of(other),
        peer_of(target),
        100,
    );
    let chunk = SnapshotChunk {
        header: Some(SnapshotHeader {
            cluster_id: cluster ^ 0x5a5a,
            from: other,
            to: target,
            total_len: 0,
            message: snap.write_to_bytes().expect("encode"),
            region_id: 1,
            kind: PeerKind::Store as i32,
        }),
        data: Vec::new(),
    };
    let refused = peer.snapshot(tokio_stream::iter(vec![chunk])).await;
    assert_eq!(
        refused.map(drop).map_err(|s| s.code()),
        Err(tonic::Code::PermissionDenied),
        "a snapshot of another cluster"
    );

    // Every store is up, the data is what was written, and writes go on.
    for i in 1..=3 {
        assert!(c.is_running(i), "store {i} ended");
    }
    write(&client, 20, 30).await;
    for i in 1..=3 {
        let only = Client::with_options([c.addrs[i - 1].clone()], c.options()).expect("client");
        wait_holds(&only, 0, 30, Duration::from_secs(10), &format!("store {i}")).await;
    }
    c.assert_replicas_agree().await;
    let log = std::fs::read_to_string(c.log_path(1)).unwrap_or_default();
    assert!(
        log.contains("refused a peer message"),
        "store 1 did not say it refused anything:\n{log}"
    );
    assert!(
        !log.contains("term: 101"),
        "a forged message moved region 1 to term 101:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_restarts_and_serves_while_pd_is_down_and_all_catch_up() {
    let mut c = RegionCluster::start(3, NO_SPLIT);
    let client = c.client();
    write(&client, 0, 20).await;
    c.pd.kill(1);
    let status = c.terminate(2, Duration::from_secs(8));
    assert!(status.is_some_and(|s| s.success()), "stop: {status:?}");
    c.restart(2);
    // Longer than a client's deadline without PD: the stores elect and serve on their own.
    let away = Instant::now();
    let mut n = 20;
    while away.elapsed() < Duration::from_secs(12) {
        write(&client, n, n + 5).await;
        n += 5;
    }
    assert!(c.is_running(2), "store 2 ended while PD was away");
    let only = Client::with_options([c.addrs[1].clone()], c.options()).expect("client");
    wait_holds(&only, 0, n, Duration::from_secs(10), "store 2 without PD").await;
    c.pd.restart(1);
    write(&client, n, n + 10).await;
    for i in 1..=3 {
        let only = Client::with_options([c.addrs[i - 1].clone()], c.options()).expect("client");
        wait_holds(
            &only,
            0,
            n + 10,
            Duration::from_secs(10),
            &format!("store {i}"),
        )
        .await;
    }
    c.assert_replicas_agree().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_restarted_on_other_ports_is_reached_by_its_peers() {
    let mut c = RegionCluster::start(3, NO_SPLIT);
    write(&c.client(), 0, 20).await;
    let status = c.terminate(2, Duration::from_secs(8));
    assert!(status.is_some_and(|s| s.success()), "stop: {status:?}");
    c.addrs[1] = format!("127.0.0.1:{}", free_port());
    c.peer_addrs[1] = format!("127.0.0.1:{}", free_port());
    c.restart(2);
    let client = c.client();
    write(&client, 20, 40).await;
    let only = Client::with_options([c.addrs[1].clone()], c.options()).expect("client");
    // About a second once its peers ask PD again; well within this.
    wait_holds(
        &only,
        0,
        40,
        Duration::from_secs(15),
        "store 2 on its new ports",
    )
    .await;
    c.assert_replicas_agree().await;
    TestCluster::wait_until(
        "PD has store 2's new address",
        Duration::from_secs(10),
        || {
            let (pd, addr) = (c.pd_client(), c.addrs[1].clone());
            async move {
                pd.get_all_stores(true)
                    .await
                    .is_ok_and(|s| s.iter().any(|s| s.address == addr))
            }
        },
    )
    .await;
}

/// The regions' durable indexes store `i` recorded beside its database (see
/// `Engine::record_region_durable_indexes`), by region.
fn recorded(c: &RegionCluster, i: usize) -> std::collections::BTreeMap<u64, u64> {
    std::fs::read_to_string(c.data_dir(i).join("RDB_REGION_DURABLE_INDEX"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (r, i) = l.split_once(' ')?;
            Some((r.parse().ok()?, i.parse().ok()?))
        })
        .collect()
}

/// Region 1's applied index on store `i`, as its status says.
async fn applied_on(c: &RegionCluster, i: usize) -> u64 {
    let only = Client::with_options([c.addrs[i - 1].clone()], c.options()).expect("client");
    let s = only.status_of(&c.addrs[i - 1]).await.expect("status");
    s.regions
        .iter()
        .find(|r| r.region_id == 1)
        .map(|r| r.applied_index)
        .expect("store hosts region 1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_database_was_rolled_back_refuses_to_start_naming_the_region() {
    let mut c = RegionCluster::start(3, NO_SPLIT);
    let client = c.client();
    write(&client, 0, 20).await;
    let at_copy = applied_on(&c, 1).await;
    let status = c.terminate(1, Duration::from_secs(8));
    assert!(status.is_some_and(|s| s.success()), "stop: {status:?}");
    let old = c.dir().join("store1-old");
    std::fs::create_dir_all(&old).expect("mkdir");
    rdb_tests::cluster::copy_dir(&c.data_dir(1), &old);

    c.restart(1);
    write(&client, 20, 120).await;
    // The store records every few seconds; wait until its record is past the old copy.
    let deadline = Instant::now() + Duration::from_secs(20);
    while recorded(&c, 1).get(&1).is_none_or(|&i| i < at_copy + 50) {
        assert!(
            Instant::now() < deadline,
            "store 1 recorded {:?}; the old copy had applied {at_copy}",
            recorded(&c, 1)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = c.terminate(1, Duration::from_secs(8));
    assert!(status.is_some_and(|s| s.success()), "stop: {status:?}");
    let record = recorded(&c, 1)[&1];

    // The old database comes back (a restored disk image, lost files) under the record the
    // store kept.
    let data = c.data_dir(1);
    let record_file = std::fs::read(data.join("RDB_REGION_DURABLE_INDEX")).expect("record");
    std::fs::remove_dir_all(&data).expect("remove");
    std::fs::create_dir_all(&data).expect("mkdir");
    rdb_tests::cluster::copy_dir(&old, &data);
    std::fs::write(data.join("RDB_REGION_DURABLE_INDEX"), record_file).expect("record");
    let log_len = std::fs::metadata(c.log_path(1)).map_or(0, |m| m.len()) as usize;
    c.restart(1);
    let status = c.wait_exit(1, Duration::from_secs(15));
    let log = std::fs::read_to_string(c.log_path(1)).unwrap_or_default();
    let log = &log[log_len.min(log.len())..];
    assert!(
        status.is_some_and(|s| !s.success()),
        "a store started from its old database: {status:?}\n{log}"
    );
    let cause = log.lines().last().unwrap_or_default();
    assert!(
        cause.starts_with("rdb-server: data directory")
            && cause.contains("region 1's raft log ends at index")
            && cause.contains(&format!("already made index {record} of it durable")),
        "no one-line cause naming the region and both indexes: {cause}"
    );
    // The region's log in the old copy ends where it was copied, below the record.
    let end: u64 = cause
        .split("ends at index ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the log end in the cause");
    assert!(end >= at_copy && end < record, "{cause}");
}
