//! TLS on real nodes: clients need TLS and a certificate the CA signed; a peer whose
//! certificate another CA signed can neither join nor send Raft messages.

use std::path::Path;
use std::time::{Duration, Instant};

use rdb_client::{Client, TlsOptions};
use rdb_tests::certs::Ca;
use rdb_tests::cluster::{bin_dir, quick_options, TestCluster};

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).expect("read cert")
}

fn client(c: &TestCluster, tls: Option<TlsOptions>) -> Client {
    let mut opts = quick_options();
    opts.deadline = SECS(3);
    opts.tls = tls;
    Client::with_options(c.endpoints(), opts).expect("client")
}

fn tls(dir: &Path, identity: Option<&str>) -> Option<TlsOptions> {
    Some(TlsOptions {
        ca_pem: read(&dir.join("ca.pem")),
        identity: identity.map(|stem| {
            (
                read(&dir.join(format!("{stem}.pem"))),
                read(&dir.join(format!("{stem}.key"))),
            )
        }),
    })
}

fn tables(dir: &Path, client_tls: bool) -> String {
    let d = dir.display();
    let mut t = format!(
        "[peer_tls]\ncert_file = \"{d}/peer{{id}}.pem\"\nkey_file = \"{d}/peer{{id}}.key\"\nca_file = \"{d}/ca.pem\"\n"
    );
    if client_tls {
        t.push_str(&format!(
            "[tls]\ncert_file = \"{d}/node{{id}}.pem\"\nkey_file = \"{d}/node{{id}}.key\"\nca_file = \"{d}/ca.pem\"\nclient_cert_auth = true\n"
        ));
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_need_tls_and_a_certificate_the_ca_signed() {
    let certs = tempfile::tempdir().expect("tempdir");
    let dir = certs.path();
    let (ca, other) = (Ca::new("rdb test CA"), Ca::new("another CA"));
    ca.write(&dir.join("ca.pem"));
    for id in 1..=3 {
        ca.issue_to(&format!("node{id}"), dir, &format!("node{id}"));
        ca.issue_to(&format!("peer{id}"), dir, &format!("peer{id}"));
    }
    ca.issue_to("client", dir, "client");
    other.issue_to("intruder", dir, "intruder");
    other.write(&dir.join("other-ca.pem"));
    let c = TestCluster::start_with_tables(3, &tables(dir, true));

    // A good client: TLS and a certificate the CA signed.
    let good = client(&c, tls(dir, Some("client")));
    let deadline = Instant::now() + SECS(30);
    while good.put("k", "v").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the TLS cluster never took a write"
        );
    }
    assert_eq!(good.get("k").await.expect("get"), Some(b"v".to_vec()));

    // Refused: plaintext, TLS without a certificate, a certificate from another CA.
    for (what, t) in [
        ("plaintext", None),
        ("no client certificate", tls(dir, None)),
        ("another CA's certificate", tls(dir, Some("intruder"))),
    ] {
        let r = client(&c, t).put("k", "intruder").await;
        assert!(r.is_err(), "{what}: the write was accepted");
    }
    assert_eq!(good.get("k").await.expect("get"), Some(b"v".to_vec()));

    // rdb-cli with --cacert, --cert and --key.
    let cli = |args: &[&str]| {
        std::process::Command::new(bin_dir().join("rdb-cli"))
            .arg("--endpoints")
            .arg(c.endpoints().join(","))
            .arg("--cacert")
            .arg(dir.join("ca.pem"))
            .arg("--cert")
            .arg(dir.join("client.pem"))
            .arg("--key")
            .arg(dir.join("client.key"))
            .args(args)
            .output()
            .expect("rdb-cli")
    };
    let out = cli(&["put", "cli-key", "cli-value"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["get", "cli-key"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "cli-value");

    // rdb-cli in plaintext: the node drops the connection, and the CLI's next write to it fails
    // with a broken pipe. That is a TLS configuration error (exit 8, which scripts do not retry)
    // with its cause every time, never death by SIGPIPE without a word (the signal that ends
    // the CLI quietly when its stdout is closed).
    for round in 0..10 {
        use std::os::unix::process::ExitStatusExt;
        let out = std::process::Command::new(bin_dir().join("rdb-cli"))
            .arg("--endpoints")
            .arg(c.endpoints().join(","))
            .args(["--timeout-ms", "1000", "get", "cli-key"])
            .output()
            .expect("rdb-cli");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            None,
            "round {round}: plaintext rdb-cli was killed by a signal: {stderr}"
        );
        assert_eq!(out.status.code(), Some(8), "round {round}: {stderr}");
        assert!(
            stderr.contains("TLS configuration: ") && stderr.contains("speaks TLS"),
            "round {round}: {stderr}"
        );
    }
    // The other TLS mistakes: each a configuration error naming what is wrong.
    let ca_pem = dir.join("ca.pem");
    let other_ca = dir.join("other-ca.pem");
    let (intruder, intruder_key) = (dir.join("intruder.pem"), dir.join("intruder.key"));
    let (client_pem, client_key) = (dir.join("client.pem"), dir.join("client.key"));
    for (what, tls_args, says) in [
        (
            "no client certificate",
            vec![&ca_pem],
            "requires a client certificate: give --cert and --key",
        ),
        (
            "another CA's client certificate",
            vec![&ca_pem, &intruder, &intruder_key],
            "refused this client's certificate",
        ),
        (
            "another CA as --cacert",
            vec![&other_ca, &client_pem, &client_key],
            "not signed by the CA given with --cacert",
        ),
    ] {
        let mut cmd = std::process::Command::new(bin_dir().join("rdb-cli"));
        cmd.arg("--endpoints").arg(c.endpoints().join(","));
        for (flag, path) in ["--cacert", "--cert", "--key"].iter().zip(&tls_args) {
            cmd.arg(flag).arg(path);
        }
        let out = cmd
            .args(["--timeout-ms", "1000", "get", "cli-key"])
            .output()
            .expect("rdb-cli");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(8), "{what}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{what}: {stderr}");
        assert!(
            stderr.contains("TLS configuration: ") && stderr.contains(says),
            "{what}: {stderr}"
        );
    }
    let out = cli(&["get", "cli-key"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "cli-value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_certificate_another_ca_signed_cannot_join() {
    let certs = tempfile::tempdir().expect("tempdir");
    let dir = certs.path();
    let (ca, other) = (Ca::new("rdb test CA"), Ca::new("another CA"));
    ca.write(&dir.join("ca.pem"));
    ca.issue_to("peer1", dir, "peer1");
    ca.issue_to("peer2", dir, "peer2");
    other.issue_to("peer3", dir, "peer3");
    let c = TestCluster::start_with_tables(3, &tables(dir, false));
    let writer = client(&c, None);
    let deadline = Instant::now() + SECS(30);
    while writer.put("k0", "v").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "nodes 1 and 2 never took a write"
        );
    }
    for i in 1..50 {
        writer.put(format!("k{i}"), "v").await.expect("put");
    }
    let mut applied = 0;
    for id in [1, 2] {
        let s = c.status(id).await.expect("status");
        applied = applied.max(s.applied_index);
    }
    for id in [1, 2] {
        c.wait_applied(id, applied, SECS(10)).await;
    }
    // Node 3 never gets the entries: nothing it sends is accepted, nothing is sent to it.
    let watch_until = Instant::now() + SECS(3);
    let mut answered = 0;
    while Instant::now() < watch_until {
        if let Some(s) = c.status(3).await {
            answered += 1;
            assert!(
                s.applied_index < applied,
                "node 3 applied {} of {applied}: it joined with another CA's certificate",
                s.applied_index
            );
            assert_ne!(s.role, "leader", "node 3 became leader");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered > 0, "node 3 never answered: it should run, alone");
}

/// Runs `rdb-cli --pd ADDRS ARGS` (the TLS options go in `args`).
fn pd_cli(c: &TestCluster, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin_dir().join("rdb-cli"))
        .arg("--pd")
        .arg(c.endpoints().join(","))
        .args(args)
        .output()
        .expect("rdb-cli")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pd_group_with_tls_answers_the_cli_over_tls_only() {
    let certs = tempfile::tempdir().expect("tempdir");
    let dir = certs.path();
    let ca = Ca::new("rdb test CA");
    ca.write(&dir.join("ca.pem"));
    for id in 1..=3 {
        ca.issue_to(&format!("node{id}"), dir, &format!("node{id}"));
        ca.issue_to(&format!("peer{id}"), dir, &format!("peer{id}"));
    }
    ca.issue_to("client", dir, "client");
    let c = TestCluster::start_pd_with_tables(3, &tables(dir, true));
    let (ca_pem, cert, key) = (
        dir.join("ca.pem"),
        dir.join("client.pem"),
        dir.join("client.key"),
    );
    let tls_args = [
        "--cacert",
        ca_pem.to_str().expect("path"),
        "--cert",
        cert.to_str().expect("path"),
        "--key",
        key.to_str().expect("path"),
    ];

    // `rdb-cli --pd ... tso` over TLS, once the group has a leader.
    let deadline = Instant::now() + SECS(30);
    let out = loop {
        let out = pd_cli(&c, &[&tls_args[..], &["-o", "json", "tso"]].concat());
        if out.status.success() || Instant::now() >= deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        out.status.success(),
        "tso over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ts: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(ts["timestamp"].as_u64().unwrap_or(0) > 0, "{ts}");

    // The PD client of the library over TLS too.
    let mut opts = quick_options();
    opts.tls = tls(dir, Some("client"));
    let pd = rdb_client::PdClient::with_options(c.endpoints(), opts).expect("client");
    let members = pd.get_members().await.expect("members over TLS");
    assert_eq!(members.members.len(), 3);

    // Plaintext is refused, with one line that says why, and exit 8 (TLS configuration).
    let out = pd_cli(&c, &["--timeout-ms", "2000", "tso"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "plaintext: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("speaks TLS") && stderr.contains("--cacert"),
        "the cause is named: {stderr}"
    );
}

/// A raw peer client of `addr` over TLS with `ca` as the trusted CA and `identity` (stem in
/// `dir`) as its certificate, or over plaintext without `ca`.
async fn raw_peer(
    addr: &str,
    dir: &Path,
    identity: Option<&str>,
    plaintext: bool,
) -> Result<
    rdb_proto::peer::peer_client::PeerClient<tonic::transport::Channel>,
    tonic::transport::Error,
> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let endpoint = if plaintext {
        Endpoint::from_shared(format!("http://{addr}"))?
    } else {
        let mut cfg =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&dir.join("ca.pem"))));
        if let Some(stem) = identity {
            cfg = cfg.identity(Identity::from_pem(
                read(&dir.join(format!("{stem}.pem"))),
                read(&dir.join(format!("{stem}.key"))),
            ));
        }
        Endpoint::from_shared(format!("https://{addr}"))?.tls_config(cfg)?
    };
    let channel = endpoint
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await?;
    Ok(rdb_proto::peer::peer_client::PeerClient::new(channel))
}

/// Whether store `addr`'s peer port takes a batch from this raw client (an empty batch for
/// an unknown store: the port answers it only after the TLS handshake and the stamp check).
async fn peer_port_answers(
    peer: Result<
        rdb_proto::peer::peer_client::PeerClient<tonic::transport::Channel>,
        tonic::transport::Error,
    >,
) -> bool {
    let Ok(mut peer) = peer else { return false };
    let batch = rdb_proto::peer::RaftBatch::default();
    match peer.raft(tokio_stream::iter(vec![batch])).await {
        Ok(_) => true,
        // Refused by the service itself (the stamp): the TLS handshake passed.
        Err(s) => s.code() == tonic::Code::PermissionDenied,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pd_mode_stores_serve_clients_peers_and_pd_over_tls_and_refuse_other_cas() {
    use rdb_tests::regions::{RegionCluster, Setup, Split};
    let certs = tempfile::tempdir().expect("tempdir");
    let dir = certs.path();
    let (ca, other) = (Ca::new("rdb test CA"), Ca::new("another CA"));
    ca.write(&dir.join("ca.pem"));
    for stem in ["pd", "store", "client"] {
        ca.issue_to(stem, dir, stem);
    }
    other.issue_to("intruder", dir, "intruder");
    let d = dir.display();
    let store_file = format!(
        "[tls]\ncert_file = \"{d}/store.pem\"\nkey_file = \"{d}/store.key\"\n\
         [peer_tls]\ncert_file = \"{d}/store.pem\"\nkey_file = \"{d}/store.key\"\nca_file = \"{d}/ca.pem\"\n\
         [pd_tls]\nca_file = \"{d}/ca.pem\"\n"
    );
    let pd_tables = format!("[tls]\ncert_file = \"{d}/pd.pem\"\nkey_file = \"{d}/pd.key\"\n");
    let c = RegionCluster::start_setup(
        3,
        Split {
            keys: 40,
            check_ms: 200,
        },
        Setup {
            store_file: Some(store_file),
            pd_tables,
            client_tls: tls(dir, None),
            ..Setup::default()
        },
    );
    // Clients over TLS, routed by PD over TLS; the regions split and replicate between the
    // stores over mutual TLS.
    let client = Client::with_pd([c.pd_addr()], c.options()).expect("client");
    for i in 0..120 {
        client
            .put(format!("key{i:03}"), "v")
            .await
            .unwrap_or_else(|e| panic!("put key{i:03} over TLS: {e}"));
    }
    c.wait_regions(2, SECS(30)).await;
    for addr in &c.addrs {
        let mut opts = c.options();
        opts.deadline = SECS(10);
        let only = Client::with_options([addr.clone()], opts).expect("client");
        let deadline = Instant::now() + SECS(10);
        while only
            .get_with("key119", rdb_client::ReadConsistency::Serializable)
            .await
            .ok()
            .flatten()
            .is_none()
        {
            assert!(Instant::now() < deadline, "{addr} never got key119");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Plaintext is refused on the client port.
    let mut plain = quick_options();
    plain.deadline = SECS(2);
    let plain = Client::with_options([c.addrs[0].clone()], plain).expect("client");
    assert!(
        plain.get("key001").await.is_err(),
        "plaintext got an answer"
    );
    // The peer port takes only peers with a certificate the CA signed.
    let peer = &c.peer_addrs[0];
    assert!(
        peer_port_answers(raw_peer(peer, dir, Some("store"), false).await).await,
        "a store's own certificate is refused"
    );
    assert!(
        !peer_port_answers(raw_peer(peer, dir, Some("intruder"), false).await).await,
        "a peer certificate another CA signed was taken"
    );
    assert!(
        !peer_port_answers(raw_peer(peer, dir, None, false).await).await,
        "a peer without a certificate was taken"
    );
    assert!(
        !peer_port_answers(raw_peer(peer, dir, None, true).await).await,
        "a plaintext peer was taken"
    );
}
