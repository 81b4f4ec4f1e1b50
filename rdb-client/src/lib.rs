//! Async Rust client for rdb.
//!
//! A [`Client`] knows a list of endpoints. It finds the leader and caches it, follows
//! `NotLeader` hints, and retries `Unavailable` answers and transport failures with backoff
//! until an overall deadline. Every write carries a request id (a random client id and a
//! sequence number), and a retry reuses it, so the cluster applies a retried write at most
//! once; a write whose outcome is still unknown at the deadline is reported as
//! [`Error::Indeterminate`], never as success or failure.
//!
//! ```no_run
//! # async fn demo() -> Result<(), rdb_client::Error> {
//! let client = rdb_client::Client::new(["127.0.0.1:2379"])?;
//! client.put("greeting", "hello").await?;
//! assert_eq!(client.get("greeting").await?, Some(b"hello".to_vec()));
//! # Ok(()) }
//! ```

mod error;
mod retry;

pub use error::Error;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdb_proto::kv::kv_client::KvClient;
use rdb_proto::kv::{
    CasRequest, Consistency, DeleteRequest, GetRequest, PutRequest, RequestId, Role, ScanRequest,
    StatusRequest,
};
use tonic::transport::{Channel, Endpoint};

/// Result with the client [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a read may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadConsistency {
    /// Through the leader with ReadIndex: never older than a write acknowledged before the read.
    #[default]
    Linearizable,
    /// From whichever node answers, possibly stale; cheaper.
    Serializable,
}

/// Timing of requests and retries.
#[derive(Debug, Clone)]
pub struct Options {
    /// Overall time one call may take, retries included.
    pub deadline: Duration,
    /// Time one attempt against one node may take.
    pub attempt_timeout: Duration,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// First pause between retries; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest pause between retries.
    pub backoff_max: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            deadline: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(6),
            connect_timeout: Duration::from_millis(500),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
        }
    }
}

/// Outcome of a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasOutcome {
    /// Whether the value matched and was replaced.
    pub succeeded: bool,
    /// On failure, the value found: `None` if the key was absent (or unknown after a retry).
    pub current: Option<Vec<u8>>,
}

/// Which keys a scan reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanRange {
    /// Inclusive start; empty for the first key.
    pub start: Vec<u8>,
    /// Exclusive end; empty for no bound.
    pub end: Vec<u8>,
    /// When non-empty, only keys with this prefix (start and end must then be empty).
    pub prefix: Vec<u8>,
    /// At most this many pairs; 0 for the server's maximum.
    pub limit: u32,
}

/// One page of a scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// Pairs in ascending key order.
    pub kvs: Vec<(Vec<u8>, Vec<u8>)>,
    /// True when the limit cut the result; continue from the last key followed by a 0 byte.
    pub more: bool,
}

/// One node's view of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStatus {
    /// The endpoint that answered.
    pub endpoint: String,
    /// Cluster id.
    pub cluster_id: u64,
    /// Node id.
    pub node_id: u64,
    /// `leader`, `follower`, `candidate` or `pre-candidate`.
    pub role: String,
    /// Current term.
    pub term: u64,
    /// Known leader, 0 if none.
    pub leader_id: u64,
    /// Commit index.
    pub commit_index: u64,
    /// Applied index.
    pub applied_index: u64,
    /// First index still in the log.
    pub first_index: u64,
    /// Last index of the log.
    pub last_index: u64,
}

struct Inner {
    endpoints: Mutex<Vec<(String, KvClient<Channel>)>>,
    leader: Mutex<Option<String>>,
    next: AtomicUsize,
    client_id: u64,
    seq: AtomicU64,
    opts: Options,
}

/// A handle to an rdb cluster. Cheap to clone; clones share connections and the leader cache.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints())
            .field("client_id", &self.inner.client_id)
            .finish()
    }
}

impl Client {
    /// A client for the cluster at `endpoints` (`host:port`), with default [`Options`].
    /// Connections are made on first use.
    pub fn new<I, S>(endpoints: I) -> Result<Client>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::with_options(endpoints, Options::default())
    }

    /// A client with explicit timing.
    pub fn with_options<I, S>(endpoints: I, opts: Options) -> Result<Client>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut list = Vec::new();
        for e in endpoints {
            let addr = e.as_ref().trim().to_string();
            if addr.is_empty() {
                continue;
            }
            list.push((addr.clone(), connect_lazy(&addr, &opts)?));
        }
        if list.is_empty() {
            return Err(Error::InvalidArgument("no endpoints given".into()));
        }
        let client_id = loop {
            let id = rand::random::<u64>();
            if id != 0 {
                break id;
            }
        };
        Ok(Client {
            inner: Arc::new(Inner {
                endpoints: Mutex::new(list),
                leader: Mutex::new(None),
                next: AtomicUsize::new(0),
                client_id,
                seq: AtomicU64::new(0),
                opts,
            }),
        })
    }

    /// The endpoints this client knows (the configured ones plus leaders it was pointed to).
    pub fn endpoints(&self) -> Vec<String> {
        lock(&self.inner.endpoints)
            .iter()
            .map(|(a, _)| a.clone())
            .collect()
    }

    fn next_request_id(&self) -> RequestId {
        RequestId {
            client_id: self.inner.client_id,
            seq: self.inner.seq.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }

    /// Writes `value` under `key`.
    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<()> {
        let req = PutRequest {
            key: key.into(),
            value: value.into(),
            request_id: Some(self.next_request_id()),
        };
        self.call(true, move |mut c| {
            let req = req.clone();
            async move {
                let r = c.put(req).await?.into_inner();
                Ok(((), r.error))
            }
        })
        .await
    }

    /// Reads `key` linearizably; `None` if absent.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<Vec<u8>>> {
        self.get_with(key, ReadConsistency::Linearizable).await
    }

    /// Reads `key` with the given consistency; `None` if absent.
    pub async fn get_with(
        &self,
        key: impl Into<Vec<u8>>,
        consistency: ReadConsistency,
    ) -> Result<Option<Vec<u8>>> {
        let req = GetRequest {
            key: key.into(),
            consistency: pb_consistency(consistency),
        };
        self.call_read(consistency, move |mut c| {
            let req = req.clone();
            async move {
                let r = c.get(req).await?.into_inner();
                Ok((r.found.then_some(r.value), r.error))
            }
        })
        .await
    }

    /// Removes `key`; returns whether it existed (for a retry the cluster had already
    /// applied, the answer recorded the first time).
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<bool> {
        let req = DeleteRequest {
            key: key.into(),
            request_id: Some(self.next_request_id()),
        };
        self.call(true, move |mut c| {
            let req = req.clone();
            async move {
                let r = c.delete(req).await?.into_inner();
                Ok((r.existed, r.error))
            }
        })
        .await
    }

    /// Sets `key` to `new` if it currently holds `expected` (`None`: if it is absent).
    pub async fn cas(
        &self,
        key: impl Into<Vec<u8>>,
        expected: Option<Vec<u8>>,
        new: impl Into<Vec<u8>>,
    ) -> Result<CasOutcome> {
        let req = CasRequest {
            key: key.into(),
            expected,
            new_value: new.into(),
            request_id: Some(self.next_request_id()),
        };
        self.call(true, move |mut c| {
            let req = req.clone();
            async move {
                let r = c.cas(req).await?.into_inner();
                Ok((
                    CasOutcome {
                        succeeded: r.succeeded,
                        current: r.current,
                    },
                    r.error,
                ))
            }
        })
        .await
    }

    /// Reads an ordered range of keys.
    pub async fn scan(&self, range: ScanRange, consistency: ReadConsistency) -> Result<ScanPage> {
        let req = ScanRequest {
            start: range.start,
            end: range.end,
            prefix: range.prefix,
            limit: range.limit,
            consistency: pb_consistency(consistency),
        };
        self.call_read(consistency, move |mut c| {
            let req = req.clone();
            async move {
                let r = c.scan(req).await?.into_inner();
                let page = ScanPage {
                    kvs: r.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect(),
                    more: r.more,
                };
                Ok((page, r.error))
            }
        })
        .await
    }

    /// Asks one endpoint for its status (no retries: this is for seeing each node as it is).
    pub async fn status_of(&self, endpoint: &str) -> Result<NodeStatus> {
        let mut c = self.client_for(endpoint)?;
        let fut = c.status(StatusRequest {});
        let r = tokio::time::timeout(
            self.inner.opts.attempt_timeout.min(Duration::from_secs(3)),
            fut,
        )
        .await
        .map_err(|_| Error::Unavailable(format!("{endpoint}: no answer in time")))?
        .map_err(|s| Error::Unavailable(format!("{endpoint}: {}", s.message())))?
        .into_inner();
        Ok(NodeStatus {
            endpoint: endpoint.to_string(),
            cluster_id: r.cluster_id,
            node_id: r.node_id,
            role: role_name(r.role).to_string(),
            term: r.term,
            leader_id: r.leader_id,
            commit_index: r.commit_index,
            applied_index: r.applied_index,
            first_index: r.first_index,
            last_index: r.last_index,
        })
    }

    /// The status of every known endpoint, in endpoint order.
    pub async fn status_all(&self) -> Vec<(String, Result<NodeStatus>)> {
        let endpoints = self.endpoints();
        let futs = endpoints.iter().map(|e| self.status_of(e));
        let results = futures::future::join_all(futs).await;
        endpoints.into_iter().zip(results).collect()
    }

    fn client_for(&self, endpoint: &str) -> Result<KvClient<Channel>> {
        let mut eps = lock(&self.inner.endpoints);
        if let Some((_, c)) = eps.iter().find(|(a, _)| a == endpoint) {
            return Ok(c.clone());
        }
        let c = connect_lazy(endpoint, &self.inner.opts)?;
        eps.push((endpoint.to_string(), c.clone()));
        Ok(c)
    }
}

fn pb_consistency(c: ReadConsistency) -> i32 {
    match c {
        ReadConsistency::Linearizable => Consistency::Linearizable as i32,
        ReadConsistency::Serializable => Consistency::Serializable as i32,
    }
}

fn role_name(role: i32) -> &'static str {
    match Role::try_from(role) {
        Ok(Role::Leader) => "leader",
        Ok(Role::Follower) => "follower",
        Ok(Role::Candidate) => "candidate",
        Ok(Role::PreCandidate) => "pre-candidate",
        _ => "unknown",
    }
}

fn connect_lazy(addr: &str, opts: &Options) -> Result<KvClient<Channel>> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let channel = Endpoint::from_shared(uri)
        .map_err(|e| Error::InvalidArgument(format!("endpoint {addr:?}: {e}")))?
        .connect_timeout(opts.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(3))
        .connect_lazy();
    Ok(KvClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
