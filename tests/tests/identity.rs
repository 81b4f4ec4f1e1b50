//! Who a data directory belongs to, and which cluster a process serves: a store refuses a PD
//! of another cluster (one that lost its data included), a config-file node, a store and a PD
//! node each refuse the others' directories, and a node refuses the layout of older versions.

use std::process::{Command, Stdio};
use std::time::Duration;

use rdb_tests::cluster::{bin_dir, free_port, TestCluster};
use rdb_tests::regions::{RegionCluster, Split};

const NO_SPLIT: Split = Split {
    keys: 1_000_000_000,
    check_ms: 1_000,
};

/// Runs a binary to its end (at most 30 s); its exit status and stderr.
fn run(binary: &str, args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(bin_dir().join(binary))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            return (status, err);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{binary} {args:?} still runs after 30 s: it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn write(c: &RegionCluster, n: usize) {
    let client = c.client();
    for i in 0..n {
        client
            .put(format!("k{i}"), "v")
            .await
            .unwrap_or_else(|e| panic!("put: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_refuses_a_pd_that_lost_its_data_and_the_new_pd_never_hears_of_it() {
    let mut c = RegionCluster::start(3, NO_SPLIT);
    write(&c, 10).await;
    // PD loses its data directory and starts again on the same address: a new cluster.
    c.pd.kill(1);
    std::fs::remove_dir_all(c.pd.data_dir(1)).expect("wipe PD");
    c.pd.restart(1);
    // A store of the old cluster restarting now refuses it, with the cause.
    let status = c.terminate(1, Duration::from_secs(8));
    assert!(status.is_some_and(|s| s.success()), "stop: {status:?}");
    c.restart(1);
    let status = c.wait_exit(1, Duration::from_secs(20));
    let log = std::fs::read_to_string(c.log_path(1)).unwrap_or_default();
    assert!(
        status.is_some_and(|s| !s.success()),
        "store 1 started against a PD of another cluster: {status:?}\n{log}"
    );
    assert!(
        log.contains("cluster") && log.contains("serves no other PD"),
        "no clear cause:\n{log}"
    );
    // The stores still running serve as before, and never register with the new PD.
    write(&c, 20).await;
    let stores = c.pd_client().get_all_stores(true).await.expect("stores");
    assert!(
        stores.is_empty(),
        "the new PD took stores of the old cluster: {stores:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_one_cluster_is_refused_by_the_pd_of_another() {
    let mut a = RegionCluster::start(3, NO_SPLIT);
    let b = RegionCluster::start(3, NO_SPLIT);
    write(&a, 5).await;
    write(&b, 5).await;
    let status = a.terminate(1, Duration::from_secs(8));
    assert!(status.is_some_and(|s| s.success()), "stop: {status:?}");
    let dir = a.dir().join("store1");
    let (addr, peer) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let (status, err) = run(
        "rdb-server",
        &[
            "--pd",
            &b.pd_addr(),
            "--addr",
            &addr,
            "--peer-addr",
            &peer,
            "--data-dir",
            dir.to_str().expect("utf-8 path"),
        ],
    );
    assert!(!status.success(), "a store of cluster A joined cluster B");
    assert!(err.contains("cluster"), "no clear cause: {err}");
    let stores = b.pd_client().get_all_stores(true).await.expect("stores");
    assert_eq!(stores.len(), 3, "B's PD took A's store: {stores:?}");
    write(&b, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_a_store_and_a_pd_node_each_refuse_the_others_directories() {
    // A config-file node's directory, and the same file used for rdb-pd (same cluster and
    // node ids): refused, whatever the ids say.
    let mut node = TestCluster::start(1);
    node.wait_leader(Duration::from_secs(20)).await;
    node.client().put("k", "v").await.expect("put");
    node.terminate(1);
    assert!(node
        .wait_exit(1, Duration::from_secs(8))
        .is_some_and(|s| s.success()));
    let config = node.config.to_str().expect("utf-8 path").to_string();
    let (status, err) = run("rdb-pd", &["--config", &config, "--node-id", "1"]);
    assert!(!status.success(), "rdb-pd opened a node's directory");
    assert!(
        err.contains("holds a node of a config-file cluster, not a PD node"),
        "{err}"
    );
    // A store on that directory.
    let pd = TestCluster::start_pd_with_tables(1, "");
    let dir = node.data_dir(1);
    let (addr, peer) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let args = |dir: &std::path::Path| {
        vec![
            "--pd".to_string(),
            pd.nodes[0].client_addr.clone(),
            "--addr".into(),
            addr.clone(),
            "--peer-addr".into(),
            peer.clone(),
            "--data-dir".into(),
            dir.display().to_string(),
        ]
    };
    let a = args(&dir);
    let (status, err) = run(
        "rdb-server",
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(!status.success(), "a store opened a node's directory");
    assert!(err.contains("not a PD-mode store"), "{err}");
    // The node still starts on its own directory, with its data.
    node.restart(1);
    node.wait_leader(Duration::from_secs(20)).await;
    assert_eq!(
        node.client().get("k").await.expect("get").as_deref(),
        Some(&b"v"[..])
    );
    // A config-file node on a PD node's directory.
    let pd_config = pd.config.to_str().expect("utf-8 path").to_string();
    let mut pd = pd;
    pd.terminate(1);
    assert!(pd.wait_exit(1, Duration::from_secs(8)).is_some());
    let (status, err) = run("rdb-server", &["--config", &pd_config, "--node-id", "1"]);
    assert!(!status.success(), "rdb-server opened a PD node's directory");
    assert!(
        err.contains("holds a PD node, not a node of a config-file cluster"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_a_directory_of_the_layout_before_region_one_and_leaves_it_untouched() {
    let mut node = TestCluster::start(1);
    node.wait_leader(Duration::from_secs(20)).await;
    node.terminate(1);
    assert!(node
        .wait_exit(1, Duration::from_secs(8))
        .is_some_and(|s| s.success()));
    // What older versions wrote for node 1 of cluster 7: its group's Raft state outside any
    // region.
    let dir = node.data_dir(1);
    std::fs::remove_dir_all(&dir).expect("remove");
    {
        let e = rdb_storage::Engine::open(&dir).expect("open");
        e.claim_kind(rdb_storage::DirKind::Node).expect("kind");
        let ident = rdb_storage::Ident {
            cluster_id: 7,
            node_id: 1,
        };
        e.bootstrap_or_check(ident, &[1], &[]).expect("old layout");
    }
    // Every record of every column family (RocksDB rewrites its own files on any open).
    let records = |d: &std::path::Path| -> Vec<(String, Vec<u8>, Vec<u8>)> {
        let opts = rocksdb::Options::default();
        let cfs = rocksdb::DB::list_cf(&opts, d).expect("column families");
        let db = rocksdb::DB::open_cf_for_read_only(&opts, d, &cfs, false).expect("open");
        let mut out = Vec::new();
        for cf in &cfs {
            let handle = db.cf_handle(cf).expect("cf");
            for item in db.iterator_cf(handle, rocksdb::IteratorMode::Start) {
                let (k, v) = item.expect("record");
                out.push((cf.clone(), k.to_vec(), v.to_vec()));
            }
        }
        out
    };
    let before = records(&dir);
    assert!(!before.is_empty());
    let config = node.config.to_str().expect("utf-8 path").to_string();
    let (status, err) = run("rdb-server", &["--config", &config, "--node-id", "1"]);
    assert!(!status.success(), "a node started on the old layout");
    let cause = err.lines().last().unwrap_or_default();
    assert!(
        cause.contains("written by an older rdb version") && cause.contains("--restore"),
        "{err}"
    );
    assert!(records(&dir) == before, "the directory was rewritten");
}

#[test]
fn a_store_refuses_split_thresholds_of_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("store");
    let (addr, peer) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    for flag in [
        "--region-split-keys",
        "--region-split-size",
        "--split-check-ms",
    ] {
        let (status, err) = run(
            "rdb-server",
            &[
                "--pd",
                "127.0.0.1:1",
                "--addr",
                &addr,
                "--peer-addr",
                &peer,
                "--data-dir",
                data.to_str().expect("utf-8 path"),
                flag,
                "0",
            ],
        );
        assert!(!status.success(), "{flag} 0 was taken");
        assert!(err.contains(&format!("{flag} must be at least 1")), "{err}");
    }
    assert!(!data.exists(), "a refused start created the data directory");
}
