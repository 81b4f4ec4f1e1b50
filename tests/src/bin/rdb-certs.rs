//! `rdb-certs DIR [NODES]`: writes a test CA and certificates it signs, for a TLS cluster on
//! 127.0.0.1 (used by `scripts/verify-replication.sh --tls`): `ca.pem`, `node{i}.pem/.key`
//! (client port) and `peer{i}.pem/.key` (peer port) for i in 1..=NODES (default 3), and
//! `client.pem/.key`. For tests only: the keys are written unencrypted.

use std::path::PathBuf;
use std::process::ExitCode;

use rdb_tests::certs::Ca;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: rdb-certs DIR [NODES]");
        return ExitCode::from(2);
    };
    let nodes: u64 = match args.next().map(|n| n.parse()) {
        None => 3,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("rdb-certs: NODES must be a positive number");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("rdb-certs: cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let ca = Ca::new("rdb test CA");
    ca.write(&dir.join("ca.pem"));
    for i in 1..=nodes {
        ca.issue_to(&format!("node{i}"), &dir, &format!("node{i}"));
        ca.issue_to(&format!("peer{i}"), &dir, &format!("peer{i}"));
    }
    ca.issue_to("client", &dir, "client");
    println!(
        "certificates for {nodes} nodes and a client in {}",
        dir.display()
    );
    ExitCode::SUCCESS
}
