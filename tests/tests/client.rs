//! `rdb-client` and `rdb-cli` against a real 3-node cluster: scans that page through large
//! values, binary keys and large values through the CLI, and the replica check.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rdb_client::{ReadConsistency, ScanRange};
use rdb_proto::kv::kv_client::KvClient;
use rdb_proto::kv::ScanRequest;
use rdb_tests::cluster::{bin_dir, TestCluster};

const SECS: fn(u64) -> Duration = Duration::from_secs;
const MIB: usize = 1 << 20;

/// Runs `rdb-cli` against the cluster with `args`, feeding `stdin`.
fn cli(c: &TestCluster, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(bin_dir().join("rdb-cli"))
        .arg("--endpoints")
        .arg(c.endpoints().join(","))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rdb-cli (cargo build --workspace --bins)");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("rdb-cli output")
}

fn explain(o: &Output) -> String {
    format!(
        "exit {:?}, stdout {:?}, stderr {:?}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout[..o.stdout.len().min(300)]),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// 100 values of 1 MiB: no single response may carry them all. The server cuts pages by
/// bytes (`more` + `next_start`), and the client follows the pages to return every pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_scan_pages_through_100_values_of_1_mib() {
    let c = TestCluster::start(3);
    let leader = c.wait_leader(SECS(10)).await;
    let client = c.client();
    for i in 0..100u8 {
        let mut v = vec![i; MIB];
        v[0] = b'v';
        client.put(format!("big/{i:03}"), v).await.unwrap();
    }
    client.put("bih", "after the prefix").await.unwrap();

    // One raw request: the server must cut it well before 100 MiB and say where to go on.
    let addr = c.nodes[(leader - 1) as usize].client_addr.clone();
    let mut raw = KvClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_decoding_message_size(usize::MAX);
    let page = raw
        .scan(ScanRequest {
            context: None,
            prefix: b"big/".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(page.error.is_none(), "{:?}", page.error);
    assert!(
        page.more && page.kvs.len() < 100,
        "one response carried {} MiB",
        page.kvs.len()
    );
    let last = &page.kvs.last().expect("a page is never empty").key;
    assert_eq!(page.next_start, [last.as_slice(), &[0]].concat());

    for consistency in [ReadConsistency::Linearizable, ReadConsistency::Serializable] {
        let all = client
            .scan(
                ScanRange {
                    prefix: b"big/".to_vec(),
                    ..Default::default()
                },
                consistency,
            )
            .await
            .unwrap();
        assert_eq!(all.kvs.len(), 100, "{consistency:?}");
        assert!(!all.more);
        for (i, (k, v)) in all.kvs.iter().enumerate() {
            assert_eq!(k, format!("big/{i:03}").as_bytes());
            assert_eq!((v.len(), v[0], v[MIB - 1]), (MIB, b'v', i as u8));
        }
    }
    // A limit across page boundaries: exactly that many, and `more`.
    let some = client
        .scan(
            ScanRange {
                start: b"big/010".to_vec(),
                limit: 45,
                ..Default::default()
            },
            ReadConsistency::Linearizable,
        )
        .await
        .unwrap();
    assert_eq!(some.kvs.len(), 45);
    assert_eq!(some.kvs[44].0, b"big/054");
    assert!(some.more);
}

/// Values too large for argv go through stdin or a file; binary keys through `--hex` or
/// `--escape`; output names every byte unambiguously.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_takes_large_values_from_stdin_and_files_and_binary_keys_as_hex() {
    let c = TestCluster::start(3);
    c.wait_leader(SECS(10)).await;
    let big: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();

    let o = cli(&c, &["put", "from-stdin", "-"], &big);
    assert!(o.status.success(), "{}", explain(&o));
    let o = cli(&c, &["get", "from-stdin", "--raw"], b"");
    assert!(o.status.success(), "{}", explain(&o));
    assert!(o.stdout == big, "the value came back byte for byte");

    let file = c.dir.path().join("value.bin");
    std::fs::write(&file, &big[..MIB - 1]).unwrap();
    let path = file.to_str().unwrap();
    let o = cli(&c, &["put", "from-file", "--value-file", path], b"");
    assert!(o.status.success(), "{}", explain(&o));
    assert_eq!(
        c.client().get("from-file").await.unwrap().as_deref(),
        Some(&big[..MIB - 1])
    );

    // cas with the expected value from a file and the new one from stdin.
    let o = cli(
        &c,
        &["cas", "from-file", "-", "--expected-file", path],
        b"swapped",
    );
    assert!(o.status.success(), "{}", explain(&o));
    assert_eq!(
        c.client().get("from-file").await.unwrap().as_deref(),
        Some(&b"swapped"[..])
    );

    // A binary key and value as hex; read back as hex, escaped, and as JSON.
    let o = cli(&c, &["--hex", "put", "00ff0a5c", "0001"], b"");
    assert!(o.status.success(), "{}", explain(&o));
    assert_eq!(
        c.client().get(vec![0u8, 0xff, b'\n', b'\\']).await.unwrap(),
        Some(vec![0, 1])
    );
    let o = cli(&c, &["--hex", "get", "00ff0a5c"], b"");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "0001\n",
        "{}",
        explain(&o)
    );
    let o = cli(&c, &["--escape", "get", "\\x00\\xff\\n\\\\"], b"");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "\\x00\\x01\n",
        "{}",
        explain(&o)
    );
    let o = cli(&c, &["-o", "json", "scan", "--limit", "1"], b"");
    assert!(o.status.success(), "{}", explain(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["encoding"], "escape");
    assert_eq!(doc["kvs"][0]["key"], "\\x00\\xff\\n\\\\", "{doc}");
    assert_eq!(doc["kvs"][0]["value"], "\\x00\\x01", "{doc}");

    // Bad hex is invalid input (exit 2) and writes nothing.
    let o = cli(&c, &["--hex", "put", "0g", "00"], b"");
    assert_eq!(o.status.code(), Some(2), "{}", explain(&o));
}

/// `rdb-cli check`: every node hashes its data at the same log index; identical replicas
/// exit 0 with one row per node, and a node that cannot answer makes it exit 7.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_check_compares_every_replica_at_one_index() {
    let mut c = TestCluster::start(3);
    let leader = c.wait_leader(SECS(10)).await;
    let client = c.client();
    for i in 0..200 {
        client.put(format!("k{i}"), format!("v{i}")).await.unwrap();
    }
    client.delete("k7").await.unwrap();

    let report = client.check().await.unwrap();
    assert!(report.consistent(), "{report:#?}");
    assert_eq!(report.nodes.len(), 3);
    let ids: Vec<_> = report.nodes.iter().map(|n| n.node_id).collect();
    assert_eq!(ids, [Some(1), Some(2), Some(3)]);
    assert!(report.nodes.iter().all(|n| n.applied_index >= report.index));
    assert!(report.nodes[0].records >= 199, "{report:#?}");

    let o = cli(&c, &["check"], b"");
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        text.lines().filter(|l| l.ends_with(" ok")).count(),
        3,
        "{text}"
    );

    let o = cli(&c, &["-o", "json", "check"], b"");
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["consistent"], true, "{doc}");

    // A stopped follower gives no hash: the check cannot vouch for it.
    let f = leader % 3 + 1;
    c.kill(f);
    let o = cli(&c, &["--timeout-ms", "3000", "check"], b"");
    assert_eq!(o.status.code(), Some(7), "{}", explain(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_calls_write_all_or_nothing_and_read_as_of_one_index() {
    let c = TestCluster::start(3);
    c.wait_leader(SECS(20)).await;
    let client = c.client();
    let pairs: Vec<(String, String)> = (0..500)
        .map(|i| (format!("b{i:04}"), format!("v{i}")))
        .collect();
    client.batch_put(pairs.clone()).await.expect("batch put");
    let keys: Vec<String> = pairs.iter().map(|(k, _)| k.clone()).collect();
    for consistency in [ReadConsistency::Linearizable, ReadConsistency::Serializable] {
        // Every node answers (linearizable reads go to every node in turn).
        for _ in 0..3 {
            let got = client
                .batch_get(keys.clone(), consistency)
                .await
                .expect("batch get");
            if consistency == ReadConsistency::Linearizable {
                for ((_, v), g) in pairs.iter().zip(&got) {
                    assert_eq!(g.as_deref(), Some(v.as_bytes()));
                }
            }
        }
    }
    // One pair over the value limit: the whole batch is refused, nothing written.
    let too_big = vec![
        ("fresh-1".to_string(), "x".to_string()),
        ("fresh-2".into(), "y".repeat(2 * MIB)),
    ];
    let e = client.batch_put(too_big).await.unwrap_err();
    assert!(matches!(e, rdb_client::Error::InvalidArgument(_)), "{e:?}");
    assert_eq!(client.get("fresh-1").await.unwrap(), None);
    // Deletes count what existed; the keys are gone together.
    let deleted = client
        .batch_delete(keys[..100].iter().cloned().chain(["nope".to_string()]))
        .await
        .expect("batch delete");
    assert_eq!(deleted, 100);
    let got = client
        .batch_get(keys[..101].to_vec(), ReadConsistency::Linearizable)
        .await
        .unwrap();
    assert!(got[..100].iter().all(Option::is_none));
    assert_eq!(got[100].as_deref(), Some(&b"v100"[..]));
    // Limits: an empty batch and one over 10,000 keys are refused.
    let none: Vec<String> = Vec::new();
    assert!(matches!(
        client.batch_delete(none).await,
        Err(rdb_client::Error::InvalidArgument(_))
    ));
    let many: Vec<String> = (0..10_001).map(|i| format!("m{i}")).collect();
    assert!(matches!(
        client.batch_get(many, ReadConsistency::Serializable).await,
        Err(rdb_client::Error::InvalidArgument(_))
    ));

    // The CLI: one entry for the pairs, a get that reports what is missing, a counted delete.
    let out = cli(&c, &["batch", "put", "c1", "one", "c2", "two"], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&c, &["batch", "get", "c1", "c2", "c3"], b"");
    assert_eq!(out.status.code(), Some(3), "a missing key exits 3");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "c1\tone\nc2\ttwo\n");
    let out = cli(
        &c,
        &["-o", "json", "batch", "delete", "c1", "c2", "c3"],
        b"",
    );
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["deleted"], 2);
    let out = cli(&c, &["batch", "put", "odd"], b"");
    assert_eq!(
        out.status.code(),
        Some(2),
        "a key without a value is refused"
    );
}

/// `rdb-cli bench`'s YCSB mixes against real processes: ycsb-a issues reads and updates, ycsb-e
/// scans and inserts, each kind counted in the JSON line, with no errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_bench_runs_ycsb_mixes_and_counts_every_kind() {
    let c = TestCluster::start(3);
    c.wait_leader(SECS(10)).await;
    for (workload, kinds) in [
        ("ycsb-a", ["read", "update"]),
        ("ycsb-e", ["scan", "insert"]),
    ] {
        let o = cli(
            &c,
            &[
                "-o",
                "json",
                "bench",
                "--workload",
                workload,
                "--keys",
                "300",
                "--clients",
                "8",
                "--connections",
                "2",
                "--duration-secs",
                "3",
            ],
            b"",
        );
        assert!(o.status.success(), "{workload}: {}", explain(&o));
        let stdout = String::from_utf8_lossy(&o.stdout);
        let line = stdout.lines().last().unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{workload}: no JSON summary ({e}): {}", explain(&o)));
        assert_eq!(v["workload"], workload);
        assert_eq!(v["errors"], 0, "{workload}: {line}");
        assert_eq!(v["distribution"], "zipfian", "{workload}: {line}");
        for kind in kinds {
            let ops = v["ops_by_kind"][kind]["ops"].as_u64().unwrap_or(0);
            assert!(ops > 0, "{workload}: no {kind} ops: {line}");
        }
        if workload == "ycsb-e" {
            let rows = v["ops_by_kind"]["scan"]["rows"].as_u64().unwrap_or(0);
            assert!(rows > 0, "ycsb-e scans returned no rows: {line}");
        }
    }
}

/// `rdb-cli get KEY | head -c 10` (escaped, and `--raw`): the reader goes away before the value
/// is written out, and the CLI ends quietly with 0, without a panic or an error line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_output_into_a_closed_pipe_ends_quietly() {
    use std::io::Read;
    let c = TestCluster::start(1);
    c.wait_leader(SECS(20)).await;
    c.client()
        .put("photo", vec![b'x'; 512 << 10])
        .await
        .expect("put");
    for args in [&["get", "photo"][..], &["get", "photo", "--raw"]] {
        let mut child = Command::new(bin_dir().join("rdb-cli"))
            .arg("--endpoints")
            .arg(c.endpoints().join(","))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run rdb-cli");
        let mut out = child.stdout.take().expect("stdout");
        let mut first = [0u8; 10];
        out.read_exact(&mut first).expect("the start of the value");
        drop(out);
        let o = child.wait_with_output().expect("rdb-cli output");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.is_empty(), "{args:?}: rdb-cli complained: {stderr}");
        assert!(
            o.status.success(),
            "{args:?}: rdb-cli ended with {:?}: {stderr}",
            o.status
        );
    }
}

/// `endpoint health` and `endpoint status`, as etcdctl has them: every member with --cluster,
/// each endpoint's gRPC health with how long it took; a node without a quorum is not healthy
/// and the command exits 4. `completion` prints a script for the shell named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_endpoint_health_and_status_and_shell_completion() {
    let mut c = TestCluster::start(3);
    c.wait_leader(SECS(20)).await;
    let first = c.endpoints()[0].clone();
    let only_first = |args: &[&str]| {
        Command::new(bin_dir().join("rdb-cli"))
            .args(["--endpoints", &first])
            .args(args)
            .output()
            .expect("run rdb-cli")
    };
    let deadline = std::time::Instant::now() + SECS(20);
    loop {
        let o = only_first(&["endpoint", "health", "--cluster"]);
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        if o.status.success() {
            assert_eq!(out.lines().count(), 4, "{}", explain(&o));
            for e in c.endpoints() {
                assert!(
                    out.lines()
                        .any(|l| l.starts_with(&e) && l.contains(" true ")),
                    "{}",
                    explain(&o)
                );
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never healthy: {}",
            explain(&o)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let o = only_first(&["endpoint", "status", "--cluster"]);
    assert!(o.status.success(), "{}", explain(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let rows: Vec<&str> = out.lines().skip(1).take_while(|l| !l.is_empty()).collect();
    assert_eq!(rows.len(), 3, "{}", explain(&o));
    assert_eq!(
        rows.iter().filter(|l| l.contains(" leader ")).count(),
        1,
        "{}",
        explain(&o)
    );

    // Two of three down: the one left has no quorum, the others do not answer.
    c.kill(2);
    c.kill(3);
    let deadline = std::time::Instant::now() + SECS(20);
    loop {
        let o = cli(&c, &["endpoint", "health"], b"");
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        if o.status.code() == Some(4)
            && out.lines().skip(1).all(|l| l.contains(" false "))
            && out.contains("not serving")
        {
            assert_eq!(out.lines().count(), 4, "{}", explain(&o));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cluster without quorum still looks healthy: {}",
            explain(&o)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Bash takes the script: it registers a completion for rdb-cli.
    let script = format!(
        "source <('{}' completion bash) && complete -p rdb-cli",
        bin_dir().join("rdb-cli").display()
    );
    let o = Command::new("bash")
        .args(["-c", &script])
        .output()
        .expect("bash");
    assert!(o.status.success(), "{}", explain(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("-F _rdb__cli rdb-cli"),
        "{}",
        explain(&o)
    );
    let o = only_first(&["completion", "fish"]);
    assert!(o.status.success(), "{}", explain(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("complete -c rdb-cli"),
        "{}",
        explain(&o)
    );
}
