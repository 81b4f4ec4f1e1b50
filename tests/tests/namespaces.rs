//! Namespaces against real processes (specs/018-versions): keys of one are never visible from
//! another, scans never cross one, a namespace must exist to be used, rdb's own keys are not
//! writable from `default`, and an `eventual` namespace's reads are served without a read
//! barrier (so a lone replica still answers, with nothing it did not apply).

use std::process::Output;
use std::time::Duration;

use rdb_client::{Error, NamespaceMode, ReadConsistency, ScanRange};
use rdb_tests::cluster::{explain, rdb_cli as cli, TestCluster};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn namespaces_keep_their_keys_apart() {
    let c = TestCluster::start(3);
    c.wait_leader(Duration::from_secs(20)).await;
    let e = c.endpoints();

    let o = cli(&e, &["namespace", "create", "apps", "--mode", "strong"]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    let o = cli(&e, &["namespace", "create", "cache", "--mode", "eventual"]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    // Again with the same mode: nothing to do; with the other: refused.
    let o = cli(&e, &["namespace", "create", "apps", "--mode", "strong"]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    let o = cli(&e, &["namespace", "create", "apps", "--mode", "eventual"]);
    assert_eq!(o.status.code(), Some(1), "{}", explain(&o));
    assert!(stdout(&o).is_empty() && explain(&o).contains("exists already"));
    let o = cli(&e, &["namespace", "list"]);
    let listed: Vec<Vec<String>> = stdout(&o)
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect();
    assert_eq!(
        listed,
        [
            ["NAME", "MODE"],
            ["default", "strong"],
            ["apps", "strong"],
            ["cache", "eventual"]
        ],
        "{}",
        explain(&o)
    );

    // The same key in three namespaces: three keys.
    let client = c.client();
    let apps = client.namespace("apps").await.expect("apps");
    client.put("k", "in default").await.expect("put");
    apps.put("k", "in apps").await.expect("put");
    apps.batch_put([("a1", "x"), ("a2", "y")])
        .await
        .expect("batch put");
    let o = cli(&e, &["--namespace", "cache", "put", "k", "in cache"]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    assert_eq!(
        client.get("k").await.expect("get"),
        Some(b"in default".to_vec())
    );
    assert_eq!(apps.get("k").await.expect("get"), Some(b"in apps".to_vec()));
    let o = cli(&e, &["-n", "cache", "get", "k"]);
    assert_eq!(stdout(&o), "in cache", "{}", explain(&o));
    assert_eq!(
        apps.batch_get(["a1", "k", "missing"], ReadConsistency::Linearizable)
            .await
            .expect("batch get"),
        vec![Some(b"x".to_vec()), Some(b"in apps".to_vec()), None]
    );

    // Scans stay in their namespace, whole or by prefix, and give back the user's keys.
    let o = cli(&e, &["scan"]);
    assert_eq!(stdout(&o), "k\tin default", "{}", explain(&o));
    let o = cli(&e, &["-n", "apps", "scan"]);
    assert_eq!(stdout(&o), "a1\tx\na2\ty\nk\tin apps", "{}", explain(&o));
    let page = apps
        .scan(
            ScanRange {
                prefix: b"a".to_vec(),
                ..ScanRange::default()
            },
            ReadConsistency::Linearizable,
        )
        .await
        .expect("prefix scan");
    let keys: Vec<_> = page.kvs.iter().map(|(k, _)| k.as_slice()).collect();
    assert_eq!(keys, [&b"a1"[..], b"a2"]);
    // A delete in one namespace leaves the others' key.
    apps.delete("k").await.expect("delete");
    assert_eq!(apps.get("k").await.expect("get"), None);
    assert_eq!(
        client.get("k").await.expect("get"),
        Some(b"in default".to_vec())
    );

    // A namespace must exist; rdb's own keys are not `default`'s.
    let o = cli(&e, &["-n", "nosuch", "get", "k"]);
    assert_eq!(o.status.code(), Some(3), "{}", explain(&o));
    assert!(explain(&o).contains("namespace 'nosuch' does not exist"));
    match client.namespace("nosuch").await {
        Err(Error::NotFound(_)) => {}
        other => panic!("a namespace never created: {other:?}"),
    }
    let o = cli(&e, &["-n", "_namespaces", "scan"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "the registry is not for use: {}",
        explain(&o)
    );
    let o = cli(&e, &["--hex", "put", "ffff6e61", "00"]);
    assert_eq!(o.status.code(), Some(2), "{}", explain(&o));
    assert!(explain(&o).contains("rdb's own"), "{}", explain(&o));
    let o = cli(&e, &["--hex", "scan", "--start", "ff"]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    assert_eq!(stdout(&o), "", "rdb's own keys never show in default");
    assert_eq!(
        client.namespaces().await.expect("list"),
        vec![
            ("apps".to_string(), NamespaceMode::Strong),
            ("cache".to_string(), NamespaceMode::Eventual)
        ]
    );
}

/// With both followers down, the leader cannot pass a read barrier: a `strong` read fails, an
/// `eventual` one is served from what the leader applied, and a write it could not commit
/// never shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eventual_reads_need_no_quorum_and_show_only_what_was_applied() {
    let mut c = TestCluster::start(3);
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let client = c.client();
    client
        .create_namespace("cache", NamespaceMode::Eventual)
        .await
        .expect("create");
    let cache = client.namespace("cache").await.expect("cache");
    assert_eq!(cache.default_consistency(), ReadConsistency::Serializable);
    cache.put("k", "committed").await.expect("put");
    client.put("k", "committed").await.expect("put");
    let lone = c.client_for(leader);
    // The lone node must have applied the write before the others go.
    TestCluster::wait_until(
        "the leader applied the write",
        Duration::from_secs(20),
        || {
            let lone = lone.clone();
            async move {
                let cache = lone.namespace("cache").await;
                match cache {
                    Ok(cache) => cache.get("k").await.is_ok_and(|v| v.is_some()),
                    Err(_) => false,
                }
            }
        },
    )
    .await;
    let lone_cache = lone.namespace("cache").await.expect("cache");
    for id in (1..=3).filter(|&id| id != leader) {
        c.kill(id);
    }
    let lost = lone_cache.put("k", "never committed").await;
    assert!(lost.is_err(), "a write without a majority: {lost:?}");
    assert_eq!(
        lone_cache.get("k").await.expect("an eventual read"),
        Some(b"committed".to_vec()),
        "served without a barrier, and only what was applied"
    );
    let strong = lone.get("k").await;
    assert!(
        strong.is_err(),
        "a strong read without a majority: {strong:?}"
    );
}
