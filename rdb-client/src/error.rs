//! The errors a caller can act on.

/// Why a call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request breaks a limit or is malformed (the message names the limit). Not retried.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The cluster kept redirecting until the deadline; the last hint is given when known.
    #[error("not leader; {}", leader_text(*.leader_id, .leader_addr.as_deref()))]
    NotLeader {
        /// The leader's id, when known.
        leader_id: Option<u64>,
        /// The leader's client address, when known.
        leader_addr: Option<String>,
    },
    /// No leader or no quorum within the deadline. For a write: it was not applied.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A write may or may not have been applied: its outcome was still unknown at the deadline.
    #[error("indeterminate: {0}")]
    Indeterminate(String),
    /// The node does not implement this call (a server older than this client), or the client
    /// cannot make it (a PD-mode client and a call about one Raft group). Not retried.
    #[error("unsupported by the server: {0}")]
    Unsupported(String),
    /// PD refused a region heartbeat: it holds a newer epoch for the region. The reporter's
    /// view of the region is out of date. Not retried.
    #[error("stale epoch: {0}")]
    StaleEpoch(String),
    /// PD was bootstrapped already. Not retried. After a retried bootstrap (an earlier attempt
    /// whose answer was lost), this may be the caller's own bootstrap.
    #[error("already bootstrapped: {0}")]
    AlreadyBootstrapped(String),
    /// PD has no such store or region. Not retried.
    #[error("not found: {0}")]
    NotFound(String),
    /// PD belongs to another cluster than the one the client expects
    /// ([`crate::PdClient::set_cluster_id`]): a store of another cluster, or a PD that lost its
    /// data and minted a new id. The message names both ids. Not retried.
    #[error("cluster mismatch: {0}")]
    ClusterMismatch(String),
    /// PD refused a change the cluster's state does not allow now (a tombstone of a store that
    /// still holds replicas; timestamps while PD's persisted limit is implausibly far ahead of
    /// its clock). The message says why and what to do. Not retried.
    #[error("refused: {0}")]
    FailedPrecondition(String),
    /// A local file could not be written (a backup being saved). Not retried.
    #[error("i/o: {0}")]
    Io(String),
    /// A read at a revision whose history was compacted away; the message names where history
    /// starts. Not retried.
    #[error("{0}")]
    Compacted(String),
    /// A read at a revision the key's region has not reached. Not retried.
    #[error("{0}")]
    FutureRevision(String),
}

/// The leader a `NotLeader` error names, for people: `leader is node 1 at 127.0.0.1:2399`,
/// or `leader unknown`.
fn leader_text(id: Option<u64>, addr: Option<&str>) -> String {
    match (id, addr.filter(|a| !a.is_empty())) {
        (Some(id), Some(addr)) => format!("leader is node {id} at {addr}"),
        (Some(id), None) => format!("leader is node {id}"),
        (None, Some(addr)) => format!("leader is at {addr}"),
        (None, None) => "leader unknown".into(),
    }
}

/// The error for an `UNIMPLEMENTED` answer from `target` to a call of `api` (`the KV API`,
/// `the PD API`): the server's reason when it gave one, else what an empty one means (the
/// address is of another kind of process, or of a server older than this client).
pub(crate) fn unimplemented(target: &str, api: &str, status: &tonic::Status) -> Error {
    if !status.message().is_empty() {
        return Error::Unsupported(format!("{target}: {}", status.message()));
    }
    let other = if api == PD_API {
        "it is not a PD node (a store, or a node of a config-file cluster?)"
    } else {
        "it is not a node or a store (a PD node?), or is older than this client"
    };
    Error::Unsupported(format!("{target} does not serve {api}: {other}"))
}

/// The API of PD nodes, for [`unimplemented`].
pub(crate) const PD_API: &str = "the PD API";
/// The API of nodes and stores, for [`unimplemented`].
pub(crate) const KV_API: &str = "the KV API";

/// A duration for people: `300 ms`, `1.5 s`, `10 s`.
pub(crate) fn human_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    match ms {
        ms if ms < 1000 => format!("{ms} ms"),
        ms if ms % 1000 == 0 => format!("{} s", ms / 1000),
        ms => format!("{} s", ms as f64 / 1000.0),
    }
}

/// Bytes for people (a key in a message): printable UTF-8 as is, `\\`, `\n`, `\r`, `\t`, and
/// `\xNN` for every other byte. Every byte string has one form, and `rdb-cli --escape` reads
/// it back.
pub fn escape_bytes(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '\n' => s.push_str("\\n"),
                '\r' => s.push_str("\\r"),
                '\t' => s.push_str("\\t"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        let _ = write!(s, "\\x{b:02x}");
                    }
                }
                c => s.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(s, "\\x{b:02x}");
        }
    }
    s
}

impl Error {
    /// Whether the same call may succeed later (no leader yet, no quorum, an unknown outcome
    /// of a retry-safe call); the rest will not change by waiting.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable(_) | Error::NotLeader { .. } | Error::Indeterminate(_)
        )
    }
}

/// True for statuses that mean the server refused the request itself (too large, malformed):
/// retrying cannot help, and nothing was applied.
pub(crate) fn is_refused_input(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::OutOfRange | tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted
    )
}

/// True when the request certainly never reached the server: no connection could be made.
///
/// Decided by the error's type, never its text. tonic 0.14 wraps every failure of its
/// connector (TCP connect refused or timed out, TLS handshake) in [`tonic::ConnectError`] and
/// turns it into an `Unavailable` status whose `source()` is the original transport error; the
/// chain below it ends in the `std::io::Error` of the failed `connect(2)`. A failure on a
/// connection that was already up (reset, h2 error) may have carried the request, so it is not
/// a connect failure.
pub(crate) fn is_connect_failure(status: &tonic::Status) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = next {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        next = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_leader_names_the_leader_in_words() {
        let e = |id, addr: Option<&str>| {
            Error::NotLeader {
                leader_id: id,
                leader_addr: addr.map(String::from),
            }
            .to_string()
        };
        assert_eq!(
            e(Some(1), Some("127.0.0.1:2399")),
            "not leader; leader is node 1 at 127.0.0.1:2399"
        );
        assert_eq!(e(Some(2), None), "not leader; leader is node 2");
        assert_eq!(e(None, Some("h:1")), "not leader; leader is at h:1");
        assert_eq!(e(None, None), "not leader; leader unknown");
        assert_eq!(e(None, Some("")), "not leader; leader unknown");
    }

    #[test]
    fn every_error_prints_without_debug_forms() {
        let all = [
            Error::InvalidArgument("key too large".into()),
            Error::NotLeader {
                leader_id: Some(3),
                leader_addr: Some("10.0.0.3:2379".into()),
            },
            Error::Unavailable("no quorum".into()),
            Error::Indeterminate("no answer".into()),
            Error::Unsupported("hash".into()),
            Error::StaleEpoch("region 2".into()),
            Error::AlreadyBootstrapped("cluster 1".into()),
            Error::NotFound("store 9".into()),
            Error::FailedPrecondition("store 2 holds replicas".into()),
            Error::Io("disk full".into()),
        ];
        for e in all {
            let text = e.to_string();
            for debug in ["Some(", "None", "\"", "{", "["] {
                assert!(!text.contains(debug), "{text}");
            }
        }
    }

    #[test]
    fn an_unimplemented_answer_without_a_reason_says_what_the_address_is_not() {
        let empty = tonic::Status::unimplemented("");
        let e = unimplemented("h:1", PD_API, &empty).to_string();
        assert_eq!(
            e,
            "unsupported by the server: h:1 does not serve the PD API: it is not a PD node (a \
             store, or a node of a config-file cluster?)"
        );
        let e = unimplemented("h:1", KV_API, &empty).to_string();
        assert!(
            e.contains("does not serve the KV API") && e.contains("PD node"),
            "{e}"
        );
        let said = tonic::Status::unimplemented("no hash points here");
        let e = unimplemented("h:1", KV_API, &said).to_string();
        assert_eq!(e, "unsupported by the server: h:1: no hash points here");
    }

    #[test]
    fn durations_and_bytes_in_words() {
        use std::time::Duration;
        assert_eq!(human_duration(Duration::from_millis(300)), "300 ms");
        assert_eq!(human_duration(Duration::from_secs(10)), "10 s");
        assert_eq!(human_duration(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(escape_bytes(b"user/42"), "user/42");
        assert_eq!(escape_bytes(b"a\nb\\\x00\xff"), "a\\nb\\\\\\x00\\xff");
        assert_eq!(escape_bytes("é".as_bytes()), "é");
    }
}
