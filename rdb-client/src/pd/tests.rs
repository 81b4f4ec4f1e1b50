//! [`PdClient`] against in-process fake PD nodes that speak the real proto ([`Fake`]): leader
//! hints, retries and the deadline (`retries`), typed errors and PD's calls (`calls`),
//! timestamp batching (`tso`), and the values parsed without a PD (`types`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

mod calls;
mod fake;
mod retries;
mod tso;
mod types;

pub(crate) use fake::{serve, Fake};

fn opts() -> Options {
    Options {
        deadline: Duration::from_secs(5),
        attempt_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_millis(300),
        election_timeout: Duration::from_secs(1),
        backoff_min: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
        tls: None,
        spread_reads: true,
    }
}

fn with_deadline(deadline: Duration) -> Options {
    Options { deadline, ..opts() }
}

/// A 127.0.0.1 port nobody listens on (bound, then released).
pub(crate) fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    addr
}

fn leader_fake() -> Arc<Fake> {
    Arc::new(Fake {
        id: 1,
        clock: Mutex::new((1_700_000_000_000, 0)),
        ..Fake::default()
    })
}
