//! Async Rust client for rdb.
//!
//! A [`Client`] knows a list of endpoints. It finds the leader and caches it, follows
//! `NotLeader` hints, and retries `Unavailable` answers and transport failures with backoff
//! until an overall deadline. A node silent for about an election timeout
//! ([`Options::election_timeout`]) is not waited for any longer: the call tries the next one,
//! while the first attempt may still answer. Every write carries a request id (a random
//! client id and a sequence number), and a retry reuses it, so the cluster applies a retried
//! write at most once; a write whose outcome is still unknown at the deadline is reported as
//! [`Error::Indeterminate`], never as success or failure.
//!
//! A [`Client::scan`] follows the server's pages (each response is capped in bytes) until the
//! caller's limit or the end of the range, and [`Client::check`] compares a hash of every
//! replica's data taken at the same log index. [`Client::save_snapshot`] saves a consistent
//! backup of the data to a file, for `rdb-server --restore`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), rdb_client::Error> {
//! let client = rdb_client::Client::new(["127.0.0.1:2379"])?;
//! client.put("greeting", "hello").await?;
//! assert_eq!(client.get("greeting").await?, Some(b"hello".to_vec()));
//! # Ok(()) }
//! ```
//!
//! A [`PdClient`] talks to rdb-pd, the placement driver, the same way (leader cache, hints,
//! retries until the deadline): timestamps ([`PdClient::timestamp`], batched across concurrent
//! callers), unique ids, and the map of stores and regions ([`pd`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), rdb_client::Error> {
//! let pd = rdb_client::PdClient::new(["127.0.0.1:2399"])?; // rdb-pd with no arguments
//! let ts = pd.timestamp().await?;
//! println!("{} = {} ms, logical {}", ts.as_u64(), ts.physical, ts.logical);
//! let region = pd.get_region("greeting").await?;
//! # Ok(()) }
//! ```
//!
//! # PD mode
//!
//! A cluster of stores run with `rdb-server --pd` hosts many regions, each a Raft group owning
//! a range of keys. [`Client::with_pd`] makes a client that finds each key's region and its
//! leader through PD, caches them ([`regions::RegionCache`], see [`Client::region_cache`]),
//! and sends each request to that leader's store with the region's id and epoch. Stores
//! correct the cache when it is out of date (a new leader, a split): the request is re-routed
//! within the same deadline, with the same request id. Batch calls are cut by region and are
//! atomic per region only; scans continue from region to region in key order. Calls about
//! one Raft group's endpoints ([`Client::check`], membership, backups) are not available in
//! this mode ([`Error::Unsupported`]); [`Client::check_regions`] checks every region's
//! replicas instead.
//!
//! ```no_run
//! # async fn demo() -> Result<(), rdb_client::Error> {
//! let opts = rdb_client::Options::default();
//! let client = rdb_client::Client::with_pd(["127.0.0.1:2399"], opts)?;
//! client.put("greeting", "hello").await?; // to the leader of the region holding "greeting"
//! let all = client.scan(Default::default(), Default::default()).await?; // every region
//! # Ok(()) }
//! ```

mod attempts;
mod backup;
mod batch;
mod check;
mod compact;
mod endpoints;
mod error;
mod health;
mod members;
mod namespaces;
pub mod pd;
mod region_members;
pub mod regions;
mod retry;
mod route;
mod routing;

pub use backup::{SavedRegion, SavedSnapshot};
pub use batch::MAX_BATCH_KEYS;
pub use check::{CheckReport, NodeHash, RegionCheck, RegionScope, ReplicaState};
pub use error::{escape_bytes, Error};
pub use health::EndpointHealth;
pub use members::{MemberChange, MemberInfo, MemberList, Role as MemberRole};
pub use namespaces::NamespaceMode;
pub use pd::{PdClient, Timestamp};
pub use region_members::{RegionMemberChange, RegionMembers};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdb_proto::kv::kv_client::KvClient;
use rdb_proto::kv::{
    CasRequest, Consistency, DeleteRequest, GetRequest, PutRequest, RequestId, Role, ScanRequest,
    StatusRequest,
};
use tokio::time::Instant;
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
    /// Longest time one attempt against one node may run. A call waits for an attempt only
    /// about an election timeout (at most a third of the deadline) before it also tries another
    /// node with the same request id; the first attempt runs on meanwhile, up to this long, and
    /// its answer is taken if it comes first. So a silent (paused, cut-off) leader costs a call
    /// about an election, and a slow one still answers.
    pub attempt_timeout: Duration,
    /// The cluster's election timeout: how long its followers wait for a silent leader before
    /// they elect another. Set it to the servers' `tick_interval_ms * election_ticks` (their
    /// default: 50 ms * 20 = 1 s, the default here too); the client cannot ask them. A call
    /// waits this long (at most a third of its deadline, at least 200 ms) for one node before
    /// it tries another. The same value serves the PD group, which has the same settings.
    pub election_timeout: Duration,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// First pause between retries; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest pause between retries.
    pub backoff_max: Duration,
    /// TLS to the nodes (`https`), or None for plaintext.
    pub tls: Option<TlsOptions>,
    /// Send linearizable reads to every node in turn (each asks the leader for a read index
    /// and answers from its own data), instead of only to the leader: spreads read load over
    /// the cluster (default true).
    pub spread_reads: bool,
}

/// How the client speaks TLS: the CA that signs the nodes' certificates, and the client's own
/// certificate and key for nodes that require one (`client_cert_auth`).
#[derive(Clone)]
pub struct TlsOptions {
    /// CA certificates (PEM).
    pub ca_pem: Vec<u8>,
    /// The client's certificate chain and private key (PEM), if it has one.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("TlsOptions")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            deadline: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(6),
            election_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(500),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
            tls: None,
            spread_reads: true,
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
    /// The swap's revision; on failure, the region's last revision.
    pub revision: u64,
    /// On failure, the key's versions (`None` if absent, or unknown after a retry).
    pub current_version: Option<KeyVersion>,
}

/// What a conditional write compares with the key's current version (specs/018-versions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// The key's version must be this (0: the key must not exist).
    Version(u64),
    /// The key's mod_revision must be this (0: the key must not exist).
    ModRevision(u64),
}

/// A key's revisions and version, without its value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyVersion {
    /// The revision that created the key (since its last delete).
    pub create_revision: u64,
    /// The revision of its last change.
    pub mod_revision: u64,
    /// 1 at creation, +1 per change.
    pub version: u64,
}

impl From<rdb_proto::kv::KeyMeta> for KeyVersion {
    fn from(m: rdb_proto::kv::KeyMeta) -> KeyVersion {
        KeyVersion {
            create_revision: m.create_revision,
            mod_revision: m.mod_revision,
            version: m.version,
        }
    }
}

/// What [`Client::delete_if`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOutcome {
    /// The key was there and is gone.
    pub deleted: bool,
    /// The key existed (when refused: exists).
    pub existed: bool,
    /// The condition did not hold: nothing was deleted.
    pub refused: bool,
    /// When refused: the key's versions (`None` if absent, or unknown after a retry).
    pub current: Option<KeyVersion>,
    /// The delete's revision (when nothing was deleted: the region's last revision).
    pub revision: u64,
}

/// A condition as the API carries it.
fn pb_condition(c: Condition) -> rdb_proto::command::Condition {
    use rdb_proto::command::condition::Check;
    rdb_proto::command::Condition {
        check: Some(match c {
            Condition::Version(v) => Check::Version(v),
            Condition::ModRevision(r) => Check::ModRevision(r),
        }),
    }
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
    /// At most this many pairs; 0 for no limit (every pair of the range, fetched page by page).
    pub limit: u32,
}

/// One version of a key (specs/018-versions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Versioned {
    /// The value.
    pub value: Vec<u8>,
    /// The revision that created the key (since its last delete).
    pub create_revision: u64,
    /// The revision of its last change.
    pub mod_revision: u64,
    /// 1 at creation, +1 per change.
    pub version: u64,
}

/// What [`Client::get_versioned`] read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionedRead {
    /// The key's version at the read (None: absent then).
    pub version: Option<Versioned>,
    /// The revision the read reflects.
    pub revision: u64,
}

/// The result of a scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// Pairs in ascending key order.
    pub kvs: Vec<(Vec<u8>, Vec<u8>)>,
    /// True when the caller's limit cut the result; continue from the last key followed by a
    /// 0 byte. (The server's own page cuts are followed by [`Client::scan`] and never show here.)
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
    /// On the leader: (follower id, match index, lag in entries) of every other voter.
    pub followers: Vec<(u64, u64, u64)>,
    /// Whether it is a PD-mode store (`node_id` is the store id; the role, term and indexes
    /// above are unset: each region has its own, in `regions`).
    pub store: bool,
    /// A store's regions, as its peers see them.
    pub regions: Vec<RegionStatus>,
}

/// One region a store hosts, as its peer there sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionStatus {
    /// The region.
    pub region_id: u64,
    /// The store's peer of it.
    pub peer_id: u64,
    /// `leader`, `follower`, `candidate`, `pre-candidate`; `learner` for a learner.
    pub role: String,
    /// Current term.
    pub term: u64,
    /// The leader's peer id and store, 0 when none is known.
    pub leader: (u64, u64),
    /// Commit index.
    pub commit_index: u64,
    /// Applied index.
    pub applied_index: u64,
    /// On the leader: the largest lag of a follower, in entries; elsewhere: commit - applied.
    pub lag: u64,
}

struct Inner {
    /// The configured endpoints; in PD mode none at first, then the stores reached.
    endpoints: endpoints::Endpoints<KvClient<Channel>>,
    /// PD mode: the placement driver and the region cache that route requests.
    routing: Option<routing::Routing>,
    client_id: u64,
    seq: AtomicU64,
    opts: Options,
}

/// A handle to an rdb cluster. Cheap to clone; clones share connections and the leader cache.
/// Its calls go to one namespace (`default` unless [`Client::namespace`] bound another).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    ns: Arc<namespaces::Bound>,
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
        let endpoints =
            endpoints::Endpoints::new(endpoints, "endpoints", |a| connect_lazy(a, &opts))?;
        Ok(Self::build(endpoints, None, opts))
    }

    fn build(
        endpoints: endpoints::Endpoints<KvClient<Channel>>,
        routing: Option<routing::Routing>,
        opts: Options,
    ) -> Client {
        let client_id = loop {
            let id = rand::random::<u64>();
            if id != 0 {
                break id;
            }
        };
        Client {
            inner: Arc::new(Inner {
                endpoints,
                routing,
                client_id,
                seq: AtomicU64::new(0),
                opts,
            }),
            ns: Arc::default(),
        }
    }

    /// The endpoints this client knows (the configured ones plus leaders it was pointed to;
    /// in PD mode, the stores it has sent requests to).
    pub fn endpoints(&self) -> Vec<String> {
        self.inner.endpoints.addrs()
    }

    pub(crate) fn next_request_id(&self) -> RequestId {
        RequestId {
            client_id: self.inner.client_id,
            seq: self.inner.seq.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }

    /// Writes `value` under `key`; returns the write's revision (specs/018-versions).
    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<u64> {
        let req = PutRequest {
            context: None,
            namespace: self.ns.wire_name(),
            key: key.into(),
            value: value.into(),
            request_id: Some(self.next_request_id()),
        };
        self.call_key(true, &req.key, self.deadline(), |mut c, context| {
            let req = PutRequest {
                context,
                ..req.clone()
            };
            async move {
                let r = c.put(req).await?.into_inner();
                Ok((r.revision, r.error))
            }
        })
        .await
    }

    /// Reads `key` linearizably (in an `eventual` namespace: from any replica, without a read
    /// barrier); `None` if absent.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<Vec<u8>>> {
        self.get_with(key, self.default_consistency()).await
    }

    /// Reads `key` with the given consistency; `None` if absent.
    pub async fn get_with(
        &self,
        key: impl Into<Vec<u8>>,
        consistency: ReadConsistency,
    ) -> Result<Option<Vec<u8>>> {
        Ok(self
            .get_versioned(key, 0, consistency)
            .await?
            .version
            .map(|v| v.value))
    }

    /// Reads `key` as of `revision` (0: the newest) with the given consistency: its version
    /// then (None if absent) and the revision the read reflects. A revision below the region's
    /// compacted one fails with [`Error::Compacted`], one it has not reached with
    /// [`Error::FutureRevision`]. In PD mode revisions are still each region's own.
    pub async fn get_versioned(
        &self,
        key: impl Into<Vec<u8>>,
        revision: u64,
        consistency: ReadConsistency,
    ) -> Result<VersionedRead> {
        let req = GetRequest {
            context: None,
            namespace: self.ns.wire_name(),
            key: key.into(),
            consistency: pb_consistency(consistency),
            revision,
        };
        self.call_read_key(consistency, &req.key, self.deadline(), |mut c, context| {
            let req = GetRequest {
                context,
                ..req.clone()
            };
            async move {
                let r = c.get(req).await?.into_inner();
                let meta = r.meta.unwrap_or_default();
                let version = r.found.then_some(Versioned {
                    value: r.value,
                    create_revision: meta.create_revision,
                    mod_revision: meta.mod_revision,
                    version: meta.version,
                });
                let read = VersionedRead {
                    version,
                    revision: r.revision,
                };
                Ok((read, r.error))
            }
        })
        .await
    }

    /// Removes `key`; returns whether it existed (for a retry the cluster had already
    /// applied, the answer recorded the first time).
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<bool> {
        Ok(self.delete_with(key, None).await?.existed)
    }

    /// Removes `key`; the outcome says whether it existed and the delete's revision (the
    /// last one when nothing was there to delete).
    pub async fn delete_versioned(&self, key: impl Into<Vec<u8>>) -> Result<DeleteOutcome> {
        self.delete_with(key, None).await
    }

    /// Removes `key` only if `condition` holds for its current version (a compare-and-delete,
    /// specs/018-versions); the outcome says whether it did, and if not, the key's versions.
    pub async fn delete_if(
        &self,
        key: impl Into<Vec<u8>>,
        condition: Condition,
    ) -> Result<DeleteOutcome> {
        self.delete_with(key, Some(condition)).await
    }

    async fn delete_with(
        &self,
        key: impl Into<Vec<u8>>,
        condition: Option<Condition>,
    ) -> Result<DeleteOutcome> {
        let req = DeleteRequest {
            context: None,
            namespace: self.ns.wire_name(),
            key: key.into(),
            request_id: Some(self.next_request_id()),
            condition: condition.map(pb_condition),
        };
        self.call_key(true, &req.key, self.deadline(), |mut c, context| {
            let req = DeleteRequest {
                context,
                ..req.clone()
            };
            async move {
                let r = c.delete(req).await?.into_inner();
                let outcome = DeleteOutcome {
                    deleted: !r.refused && r.existed,
                    existed: r.existed,
                    refused: r.refused,
                    current: r.current_meta.map(KeyVersion::from),
                    revision: r.revision,
                };
                Ok((outcome, r.error))
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
        self.cas_with(key.into(), expected, None, new.into()).await
    }

    /// Sets `key` to `new` if `condition` holds for its current version: its version or
    /// mod_revision (0: the key must not exist; specs/018-versions).
    pub async fn cas_if(
        &self,
        key: impl Into<Vec<u8>>,
        condition: Condition,
        new: impl Into<Vec<u8>>,
    ) -> Result<CasOutcome> {
        self.cas_with(key.into(), None, Some(condition), new.into())
            .await
    }

    async fn cas_with(
        &self,
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        condition: Option<Condition>,
        new: Vec<u8>,
    ) -> Result<CasOutcome> {
        let req = CasRequest {
            context: None,
            namespace: self.ns.wire_name(),
            key,
            expected,
            new_value: new,
            request_id: Some(self.next_request_id()),
            condition: condition.map(pb_condition),
        };
        self.call_key(true, &req.key, self.deadline(), |mut c, context| {
            let req = CasRequest {
                context,
                ..req.clone()
            };
            async move {
                let r = c.cas(req).await?.into_inner();
                Ok((
                    CasOutcome {
                        succeeded: r.succeeded,
                        current: r.current,
                        revision: r.revision,
                        current_version: r.current_meta.map(KeyVersion::from),
                    },
                    r.error,
                ))
            }
        })
        .await
    }

    /// Reads an ordered range of keys: at most `range.limit` pairs (0: all of them).
    ///
    /// The server caps each response in bytes and says where the next page starts; this call
    /// follows those pages, each a separate request with the same consistency, all under one
    /// overall deadline. Each page is a read of its own: pages are not one snapshot, so a write
    /// made between two pages may show in the later one only. A prefix scan continues as the
    /// range from the next key to the end of the prefix. In PD mode each page goes to the
    /// region of its first key, and a region's store ends the page at the region's end.
    pub async fn scan(&self, range: ScanRange, consistency: ReadConsistency) -> Result<ScanPage> {
        self.scan_at(range, 0, consistency).await
    }

    /// [`Client::scan`] as of `revision` (0: the newest): every page asks that revision, so
    /// in a config-file cluster (one region) the pages are one view of the data. Fails as
    /// [`Client::get_versioned`] does for a revision outside the history kept. In PD mode
    /// revisions are still each region's own: a revision means something in one region only.
    pub async fn scan_at(
        &self,
        range: ScanRange,
        revision: u64,
        consistency: ReadConsistency,
    ) -> Result<ScanPage> {
        let deadline = self.deadline();
        let limit = range.limit as usize;
        let mut req = ScanRequest {
            context: None,
            namespace: self.ns.wire_name(),
            start: range.start,
            end: range.end,
            prefix: range.prefix,
            limit: range.limit,
            consistency: pb_consistency(consistency),
            revision,
            with_meta: false,
        };
        let mut kvs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        loop {
            let page = self.scan_page(&req, consistency, deadline).await?;
            let next = match (page.next_start.is_empty(), page.kvs.last()) {
                (false, _) => page.next_start,
                // A server that cut the page without naming the next key (its maximum page
                // size, older servers): continue right after the last key returned.
                (true, Some((last, _))) => successor(last),
                (true, None) => Vec::new(),
            };
            kvs.extend(page.kvs);
            if limit != 0 && kvs.len() >= limit {
                let cut = page.more || kvs.len() > limit;
                kvs.truncate(limit);
                return Ok(ScanPage { kvs, more: cut });
            }
            if !page.more {
                return Ok(ScanPage { kvs, more: false });
            }
            if !req.prefix.is_empty() {
                req.end = prefix_end(&req.prefix);
                req.start = std::mem::take(&mut req.prefix);
            }
            if next.is_empty() || next <= req.start {
                return Err(Error::Unavailable(format!(
                    "scan: the server said more keys follow but gave no later start key \
                     (next '{}' after start '{}')",
                    escape_bytes(&next),
                    escape_bytes(&req.start)
                )));
            }
            if !req.end.is_empty() && next >= req.end {
                return Ok(ScanPage { kvs, more: false });
            }
            req.start = next;
            if limit != 0 {
                req.limit = (limit - kvs.len()) as u32;
            }
        }
    }

    /// One scan request, retried under `deadline`.
    async fn scan_page(
        &self,
        req: &ScanRequest,
        consistency: ReadConsistency,
        deadline: Instant,
    ) -> Result<RawPage> {
        // The page's first key routes it (PD mode): the store answers its region's part only.
        let first = if req.prefix.is_empty() {
            &req.start
        } else {
            &req.prefix
        };
        self.call_read_key(consistency, first, deadline, |mut c, context| {
            let req = ScanRequest {
                context,
                ..req.clone()
            };
            async move {
                let r = c.scan(req).await?.into_inner();
                let page = RawPage {
                    kvs: r.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect(),
                    more: r.more,
                    next_start: r.next_start,
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
        .map_err(|s| match s.code() {
            tonic::Code::Unimplemented => {
                crate::error::unimplemented(endpoint, crate::error::KV_API, &s)
            }
            _ => Error::Unavailable(format!("{endpoint}: {}", s.message())),
        })?
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
            followers: r
                .followers
                .iter()
                .map(|f| (f.id, f.match_index, f.lag))
                .collect(),
            store: r.store,
            regions: r
                .regions
                .iter()
                .map(|g| RegionStatus {
                    region_id: g.region_id,
                    peer_id: g.peer_id,
                    role: if g.learner {
                        "learner".to_string()
                    } else {
                        role_name(g.role).to_string()
                    },
                    term: g.term,
                    leader: (g.leader_peer_id, g.leader_store_id),
                    commit_index: g.commit_index,
                    applied_index: g.applied_index,
                    lag: g.lag,
                })
                .collect(),
        })
    }

    /// Hands leadership to node `to` and waits (until the deadline) for `to` to report itself
    /// leader. The current leader must be in contact with a quorum; `to` must be a voter.
    pub async fn transfer_leader(&self, to: u64) -> Result<()> {
        let deadline = self.deadline();
        loop {
            let statuses = self.status_all().await;
            let leads = |id: u64| {
                statuses.iter().any(|(_, s)| {
                    s.as_ref()
                        .is_ok_and(|s| s.node_id == id && s.role == "leader")
                })
            };
            if leads(to) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Unavailable(format!(
                    "node {to} did not take over leadership before the deadline"
                )));
            }
            // Start (or restart) the transfer on whoever leads now.
            self.call_until(false, deadline, move |mut c| async move {
                let r = c
                    .transfer_leader(rdb_proto::kv::TransferLeaderRequest { to, region_id: 0 })
                    .await?
                    .into_inner();
                Ok(((), r.error))
            })
            .await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The status of every known endpoint, in endpoint order.
    pub async fn status_all(&self) -> Vec<(String, Result<NodeStatus>)> {
        let endpoints = self.endpoints();
        let futs = endpoints.iter().map(|e| self.status_of(e));
        let results = futures::future::join_all(futs).await;
        endpoints.into_iter().zip(results).collect()
    }

    pub(crate) fn client_for(&self, endpoint: &str) -> Result<KvClient<Channel>> {
        let opts = &self.inner.opts;
        self.inner
            .endpoints
            .client_for(endpoint, |a| connect_lazy(a, opts))
    }
}

/// One response of a scan, as the server sent it.
struct RawPage {
    kvs: Vec<(Vec<u8>, Vec<u8>)>,
    more: bool,
    next_start: Vec<u8>,
}

/// The smallest key after `key`.
fn successor(key: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    k.push(0);
    k
}

/// The smallest key greater than every key with `prefix`; empty (unbounded) if none exists.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

pub(crate) fn pb_consistency(c: ReadConsistency) -> i32 {
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
    Ok(KvClient::new(channel_lazy(addr, opts)?)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

/// A channel to `addr` (`host:port` or a URI) that connects on first use.
pub(crate) fn channel_lazy(addr: &str, opts: &Options) -> Result<Channel> {
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("{scheme}://{addr}")
    };
    let mut endpoint = Endpoint::from_shared(uri)
        .map_err(|e| Error::InvalidArgument(format!("endpoint '{addr}': {e}")))?;
    if let Some(tls) = &opts.tls {
        let mut cfg = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca_pem));
        if let Some((cert, key)) = &tls.identity {
            cfg = cfg.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        endpoint = endpoint
            .tls_config(cfg)
            .map_err(|e| Error::InvalidArgument(format!("tls for '{addr}': {e}")))?;
    }
    let channel = endpoint
        .connect_timeout(opts.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(3))
        .connect_lazy();
    Ok(channel)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
