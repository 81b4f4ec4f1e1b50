//! Backup and restore on real processes: `rdb-cli snapshot save` (and `Client::save_snapshot`)
//! from a running cluster, `rdb-server --restore` into the directories of a new cluster with
//! another cluster id, and the refusals that must leave directories untouched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdb_client::{Client, ReadConsistency, ScanRange};
use rdb_tests::cluster::{bin_dir, TestCluster};

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// The cluster id of every restored cluster (the source clusters have 7).
const NEW_CLUSTER_ID: u64 = 8;

fn explain(o: &Output) -> String {
    format!(
        "exit {:?}, stdout {:?}, stderr {:?}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `rdb-server --restore FILE --config CONFIG [--node-id N]`.
fn restore(config: &Path, file: &Path, node: Option<u64>) -> Output {
    let mut cmd = Command::new(bin_dir().join("rdb-server"));
    cmd.arg("--restore").arg(file).arg("--config").arg(config);
    if let Some(id) = node {
        cmd.arg("--node-id").arg(id.to_string());
    }
    cmd.output()
        .expect("run rdb-server (cargo build --workspace --bins)")
}

/// A new 3-node cluster (its own ports and directories) with cluster id [`NEW_CLUSTER_ID`],
/// its nodes stopped and its data directories absent: ready for `rdb-server --restore`, then
/// `restart` of each node. (TestCluster starts its nodes at once: they are killed and their
/// fresh directories removed before anything else happens.)
fn unstarted_cluster() -> TestCluster {
    let mut c = TestCluster::start(3);
    for id in 1..=3 {
        c.kill(id);
        if c.data_dir(id).exists() {
            std::fs::remove_dir_all(c.data_dir(id)).expect("remove a fresh data directory");
        }
    }
    let toml = std::fs::read_to_string(&c.config).expect("read config");
    assert!(toml.starts_with("cluster_id = 7\n"), "{toml}");
    let toml = toml.replacen(
        "cluster_id = 7",
        &format!("cluster_id = {NEW_CLUSTER_ID}"),
        1,
    );
    std::fs::write(&c.config, toml).expect("write config");
    c
}

/// Restores `file` into every node of `c` with one `rdb-server --restore`, checks its report,
/// and starts the nodes.
async fn restore_and_start(c: &mut TestCluster, file: &Path, index: u64) {
    let o = restore(&c.config, file, None);
    assert!(o.status.success(), "restore: {}", explain(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "one line per node: {out}");
    for (id, line) in (1..=3).zip(&lines) {
        assert!(
            line.starts_with(&format!("restored node {id} into "))
                && line.contains(&format!("index {index},")),
            "{line}"
        );
    }
    for id in 1..=3 {
        c.restart(id);
    }
    c.wait_leader(SECS(10)).await;
}

/// Every pair of the cluster, in key order (a linearizable scan, page by page).
async fn all_pairs(client: &Client) -> Vec<(Vec<u8>, Vec<u8>)> {
    client
        .scan(
            ScanRange {
                limit: 0,
                ..Default::default()
            },
            ReadConsistency::Linearizable,
        )
        .await
        .expect("full scan")
        .kvs
}

/// Checks a new cluster: its id, replicas identical, and it takes new writes.
async fn check_accepts_writes(c: &TestCluster, index: u64) {
    let client = c.client();
    let leader = c.wait_leader(SECS(10)).await;
    let s = c.status(leader).await.expect("status");
    assert_eq!(s.cluster_id, NEW_CLUSTER_ID);
    assert!(s.applied_index > index, "{s:?} at backup index {index}");
    client.put("after-restore", "new").await.expect("a write");
    assert_eq!(
        client.get("after-restore").await.unwrap().as_deref(),
        Some(&b"new"[..])
    );
    let report = client.check().await.expect("replica check");
    assert!(report.consistent(), "replicas differ: {report:?}");
}

/// Under load: 8 writers keep writing while `rdb-cli snapshot save` runs. Every write
/// acknowledged before the save started is in the backup, and reads back from a new cluster
/// restored from it; the new cluster takes writes and its replicas are identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_under_load_restores_every_acknowledged_write() {
    let src = TestCluster::start(3);
    src.wait_leader(SECS(10)).await;
    let client = src.client();
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let (client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let (k, v) = (format!("load/{t}/{i:06}"), format!("v{t}-{i}"));
                    client
                        .put(k.clone(), v.clone())
                        .await
                        .expect("put under load");
                    acked.lock().unwrap().push((k, v));
                    i += 1;
                }
            })
        })
        .collect();
    let acked_count = || acked.lock().unwrap().len();
    TestCluster::wait_until("300 writes under load", SECS(30), || {
        let n = acked_count();
        async move { n >= 300 }
    })
    .await;

    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("under-load.rdb");
    let before: Vec<(String, String)> = acked.lock().unwrap().clone();
    let o = Command::new(bin_dir().join("rdb-cli"))
        .arg("--endpoints")
        .arg(src.endpoints().join(","))
        .args(["-o", "json", "snapshot", "save"])
        .arg(&file)
        .output()
        .expect("run rdb-cli");
    let during = acked_count() - before.len();
    assert!(o.status.success(), "snapshot save: {}", explain(&o));
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.expect("writer");
    }
    assert!(
        during > 0,
        "no write was acknowledged while the backup was taken"
    );

    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let index = doc["index"].as_u64().expect("index");
    let bytes = std::fs::read(&file).expect("the backup file");
    assert_eq!(doc["bytes"].as_u64(), Some(bytes.len() as u64), "{doc}");
    assert_eq!(
        doc["crc32"].as_str(),
        Some(format!("{:08x}", crc32fast::hash(&bytes)).as_str()),
        "{doc}"
    );
    assert_eq!(doc["cluster_id"].as_u64(), Some(7));
    assert!(
        doc["keys"].as_u64().unwrap() >= before.len() as u64,
        "{doc}"
    );
    assert!(!out.path().join("under-load.rdb.partial").exists());
    drop(src);

    let mut new = unstarted_cluster();
    restore_and_start(&mut new, &file, index).await;
    let restored: BTreeMap<Vec<u8>, Vec<u8>> = all_pairs(&new.client()).await.into_iter().collect();
    let missing: Vec<&(String, String)> = before
        .iter()
        .filter(|(k, v)| restored.get(k.as_bytes()) != Some(&v.as_bytes().to_vec()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} writes acknowledged before the save are not in the restored cluster, e.g. {:?}",
        missing.len(),
        before.len(),
        &missing[..missing.len().min(5)]
    );
    // Nothing else came in: every restored key is one the writers wrote.
    assert!(restored.keys().all(|k| k.starts_with(b"load/")));
    check_accepts_writes(&new, index).await;
}

/// On an idle cluster, a backup restores to exactly the same data: a full scan of the new
/// cluster equals the old one's, binary keys, large values and deletes included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_cluster_restores_to_identical_data() {
    let src = TestCluster::start(3);
    src.wait_leader(SECS(10)).await;
    let client = src.client();
    for i in 0..300u32 {
        client
            .put(format!("k{i:04}"), format!("value {i}"))
            .await
            .unwrap();
    }
    client
        .put(vec![0u8, 0xff, b'\n'], vec![0u8; 10])
        .await
        .unwrap();
    client.put("big", vec![7u8; 600 << 10]).await.unwrap();
    for i in (0..300u32).step_by(7) {
        client.delete(format!("k{i:04}")).await.unwrap();
    }
    let cas = client
        .cas("k0001", Some(b"value 1".to_vec()), "swapped")
        .await
        .unwrap();
    assert!(cas.succeeded);
    let old = all_pairs(&client).await;

    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("idle.rdb");
    // Asked through a follower only: it serves the backup itself after a read barrier through
    // the leader (a ReadIndex round, then applying that far), so it holds every acknowledged
    // write, as a linearizable read there would.
    let leader = src.wait_leader(SECS(10)).await;
    let follower = leader % 3 + 1;
    let saved = src
        .client_for(follower)
        .save_snapshot(&file)
        .await
        .expect("save");
    assert_eq!(saved.node_id, follower);
    assert_eq!(
        saved.endpoint,
        src.nodes[(follower - 1) as usize].client_addr
    );
    assert_eq!(saved.keys, old.len() as u64);
    assert_eq!(saved.bytes, std::fs::metadata(&file).unwrap().len());
    assert_eq!(saved.cluster_id, 7);
    // Idle: the backup is at the applied index of the node that sent it.
    assert_eq!(
        saved.index,
        src.status(follower).await.unwrap().applied_index
    );
    // The node kept no copy: its backup file was unlinked before it was streamed.
    let leftovers: Vec<String> = std::fs::read_dir(src.data_dir(follower).join("snap"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("backup-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let mut new = unstarted_cluster();
    restore_and_start(&mut new, &file, saved.index).await;
    let restored = all_pairs(&new.client()).await;
    assert_eq!(restored.len(), old.len());
    assert!(restored == old, "the restored data differs from the source");
    // Versions and history came along (specs/018-versions): the same versions, the state
    // before the swap at its revision, and new writes' revisions above the source's.
    let versioned = |c: Client, r: u64| async move {
        c.get_versioned("k0001", r, ReadConsistency::Linearizable)
            .await
            .expect("a versioned read")
            .version
    };
    assert_eq!(
        versioned(new.client(), 0).await,
        versioned(client.clone(), 0).await
    );
    assert_eq!(
        versioned(new.client(), cas.revision - 1)
            .await
            .map(|v| v.value),
        Some(b"value 1".to_vec())
    );
    let next = new.client().put("k0001", "later").await.expect("a write");
    assert!(
        next > cas.revision,
        "revision {next} after a restore at {}",
        cas.revision
    );
    new.client()
        .put("k0001", "swapped")
        .await
        .expect("put the value back");
    // Compared with the source still running, not only with a copy taken earlier.
    assert_eq!(all_pairs(&client).await, restored);
    check_accepts_writes(&new, saved.index).await;
}

/// A damaged backup is refused by `--restore` with a one-line cause, creating nothing; a
/// restore over a directory that holds data is refused and leaves it as it was; and a refusal
/// for one node of several writes no node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_backups_and_existing_directories_are_refused_and_left_untouched() {
    let mut src = TestCluster::start(3);
    src.wait_leader(SECS(10)).await;
    let client = src.client();
    for i in 0..50 {
        client.put(format!("k{i}"), format!("v{i}")).await.unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("good.rdb");
    client.save_snapshot(&file).await.expect("save");
    let good = std::fs::read(&file).unwrap();

    let new = unstarted_cluster();
    let dirs: Vec<PathBuf> = (1..=3).map(|id| new.data_dir(id)).collect();
    for at in [10, good.len() / 2, good.len() - 2] {
        let mut b = good.clone();
        b[at] ^= 0x20;
        let bad = out.path().join("bad.rdb");
        std::fs::write(&bad, &b).unwrap();
        let o = restore(&new.config, &bad, None);
        assert_eq!(o.status.code(), Some(1), "{}", explain(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.starts_with("rdb-server: ")
                && err.contains("bad backup")
                && err.contains("bad.rdb"),
            "{err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(o.stdout.is_empty(), "{}", explain(&o));
        for d in &dirs {
            assert!(!d.exists(), "{} was created", d.display());
        }
    }
    let o = restore(&new.config, &out.path().join("missing.rdb"), Some(1));
    assert_eq!(o.status.code(), Some(1), "{}", explain(&o));
    assert!(!dirs[0].exists());

    // One target holds something: no node is restored.
    std::fs::create_dir_all(&dirs[1]).unwrap();
    std::fs::write(dirs[1].join("keep.txt"), b"mine").unwrap();
    let o = restore(&new.config, &file, None);
    assert_eq!(o.status.code(), Some(1), "{}", explain(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not empty") && err.contains("node2"), "{err}");
    assert!(!dirs[0].exists() && !dirs[2].exists());
    assert_eq!(std::fs::read(dirs[1].join("keep.txt")).unwrap(), b"mine");
    assert_eq!(std::fs::read_dir(&dirs[1]).unwrap().count(), 1);

    // Over a node's live data: refused, and the node starts again with its data.
    src.kill(1);
    let files_before = std::fs::read_dir(src.data_dir(1)).unwrap().count();
    let o = restore(&src.config, &file, Some(1));
    assert_eq!(o.status.code(), Some(1), "{}", explain(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not empty"));
    assert_eq!(
        std::fs::read_dir(src.data_dir(1)).unwrap().count(),
        files_before
    );
    src.restart(1);
    TestCluster::wait_until("node 1 serves its data again", SECS(10), || {
        let c = src.client_for(1);
        async move {
            c.get_with("k49", ReadConsistency::Serializable)
                .await
                .ok()
                .flatten()
                .as_deref()
                == Some(&b"v49"[..])
        }
    })
    .await;
}

/// Over TLS with client certificates: `rdb-cli snapshot save` with `--cacert --cert --key`
/// works; a plaintext client gets nothing and leaves no file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_is_saved_over_tls_with_the_clients_certificate() {
    use rdb_tests::certs::Ca;
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    let ca = Ca::new("rdb test CA");
    ca.write(&dir.join("ca.pem"));
    for id in 1..=3 {
        ca.issue_to(&format!("node{id}"), dir, &format!("node{id}"));
    }
    ca.issue_to("client", dir, "client");
    let d = dir.display();
    let c = TestCluster::start_with_tables(
        3,
        &format!(
            "[tls]\ncert_file = \"{d}/node{{id}}.pem\"\nkey_file = \"{d}/node{{id}}.key\"\nca_file = \"{d}/ca.pem\"\nclient_cert_auth = true\n"
        ),
    );
    let cli = |file: &Path, tls: bool| {
        let mut cmd = Command::new(bin_dir().join("rdb-cli"));
        cmd.arg("--endpoints")
            .arg(c.endpoints().join(","))
            .args(["--timeout-ms", "3000"]);
        if tls {
            cmd.arg("--cacert")
                .arg(dir.join("ca.pem"))
                .arg("--cert")
                .arg(dir.join("client.pem"))
                .arg("--key")
                .arg(dir.join("client.key"));
        }
        cmd.args(["snapshot", "save"]).arg(file).output().unwrap()
    };
    let out = tempfile::tempdir().unwrap();
    let plain = out.path().join("plain.rdb");
    let o = cli(&plain, false);
    // A TLS configuration error (exit 8), not death by a signal.
    assert_eq!(o.status.code(), Some(8), "{}", explain(&o));
    assert!(!plain.exists() && !out.path().join("plain.rdb.partial").exists());

    let file = out.path().join("tls.rdb");
    let mut saved = None;
    TestCluster::wait_until("a backup over TLS", SECS(30), || {
        let o = cli(&file, true);
        let ok = o.status.success();
        if ok {
            saved = Some(String::from_utf8_lossy(&o.stdout).to_string());
        }
        async move { ok }
    })
    .await;
    let saved = saved.unwrap();
    assert!(
        saved.starts_with("saved ") && saved.contains("(from node"),
        "{saved}"
    );
    let len = std::fs::metadata(&file).unwrap().len();
    assert!(saved.contains(&format!(" {len} bytes,")), "{saved}");
}
