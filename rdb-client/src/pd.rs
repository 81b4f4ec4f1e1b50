//! [`PdClient`]: the client of rdb-pd, the placement driver (timestamp oracle, id allocator,
//! and the map of stores and regions).
//!
//! A PD group is a Raft group of its own, and only its leader answers. The client caches the
//! leader it last heard from, follows a `NOT_LEADER` answer's hint (the leader's client
//! address), tries the next endpoint when there is no hint, and retries `UNAVAILABLE`,
//! `INDETERMINATE` and transport failures with backoff until the overall deadline of
//! [`Options`]. A node silent past its turn (about an election) is not waited for any longer
//! ([`crate::attempts`]): a paused leader costs a call about an election. Retrying is safe for every PD call (pd.proto): a retried `AllocId` or `Tso`
//! at worst skips ids or timestamps, and a retried store or bootstrap change lands once.
//!
//! [`PdClient::timestamp`] batches: callers queue, one task at a time asks PD for as many
//! timestamps as are queued (one `Tso` request with `count = n`) and hands out
//! `first .. first + n - 1`, one to each caller in queue order. A caller that waits for one
//! timestamp before asking for the next gets strictly increasing ones, since each request is
//! sent after the previous answer arrived and PD answers above everything it handed out before.
//!
//! Cluster identity: [`PdClient::cluster_id`] asks PD for its cluster id; after
//! [`PdClient::set_cluster_id`], every request carries the expected id (gRPC metadata
//! `rdb-cluster-id`) and a PD of another cluster refuses it with [`Error::ClusterMismatch`],
//! which is not retried.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdb_proto::pd as pb;
use rdb_proto::pd::pd_client::PdClient as PdGrpcClient;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::attempts::{Attempts, Waited};
use crate::error::human_duration;
use crate::error::{is_connect_failure, is_refused_input};
use crate::{channel_lazy, lock, Error, Options, Result};

mod types;
pub use types::*;

/// The most timestamps one TSO request may ask for (pd.proto: 1 to 65536).
pub const MAX_TSO_BATCH: u32 = 1 << Timestamp::LOGICAL_BITS;

/// How long a timestamp waiter waits past its deadline for its batch's own answer.
const TSO_GRACE: Duration = Duration::from_millis(200);

/// A caller waiting for one timestamp, and its deadline.
type TsoWaiter = (Instant, oneshot::Sender<Result<Timestamp>>);

/// Callers waiting for one timestamp each.
#[derive(Default)]
struct TsoQueue {
    waiting: VecDeque<TsoWaiter>,
    /// A task is draining the queue.
    driving: bool,
}

/// Clears [`TsoQueue::driving`] when the driving task ends without emptying the queue (its
/// runtime shut down), so a later caller starts another driver.
struct Driving<'a> {
    queue: &'a Mutex<TsoQueue>,
    finished: bool,
}

impl Drop for Driving<'_> {
    fn drop(&mut self) {
        if !self.finished {
            lock(self.queue).driving = false;
        }
    }
}

/// Stamps every request with the expected cluster id, once one is set (0: none).
#[derive(Clone, Default)]
struct Stamp(Arc<AtomicU64>);

impl tonic::service::Interceptor for Stamp {
    fn call(
        &mut self,
        mut req: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        let id = self.0.load(Ordering::Relaxed);
        if id != 0 {
            req.metadata_mut()
                .insert(pb::CLUSTER_ID_METADATA, id.into());
        }
        Ok(req)
    }
}

/// The generated client over a lazy channel, stamping requests.
type PdGrpc = PdGrpcClient<InterceptedService<Channel, Stamp>>;

struct Inner {
    endpoints: crate::endpoints::Endpoints<PdGrpc>,
    opts: Options,
    tso: Mutex<TsoQueue>,
    stamp: Stamp,
}

/// A handle to a PD group. Cheap to clone; clones share connections, the leader cache and the
/// timestamp batch.
#[derive(Clone)]
pub struct PdClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PdClient")
            .field("endpoints", &self.endpoints())
            .field("leader", &self.leader())
            .finish()
    }
}

/// What one attempt learned.
enum Next {
    /// Go to this address at once (a leader hint).
    Redirect(String),
    /// Not the leader and no hint: try the next endpoint.
    Elsewhere,
    /// Try another node after a pause.
    Backoff,
}

impl PdClient {
    /// A client for the PD nodes at `endpoints` (client addresses, `host:port`), with default
    /// [`Options`]. Connections are made on first use.
    pub fn new<I, S>(endpoints: I) -> Result<PdClient>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::with_options(endpoints, Options::default())
    }

    /// A client with explicit timing.
    pub fn with_options<I, S>(endpoints: I, opts: Options) -> Result<PdClient>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let stamp = Stamp::default();
        let endpoints = crate::endpoints::Endpoints::new(endpoints, "PD endpoints", |a| {
            connect(a, &opts, &stamp)
        })?;
        Ok(PdClient {
            inner: Arc::new(Inner {
                endpoints,
                opts,
                tso: Mutex::new(TsoQueue::default()),
                stamp,
            }),
        })
    }

    /// From now on every request (of this client and its clones) carries `cluster_id`, and a PD
    /// of another cluster answers [`Error::ClusterMismatch`]. 0 stops stamping.
    pub fn set_cluster_id(&self, cluster_id: u64) {
        self.inner.stamp.0.store(cluster_id, Ordering::Relaxed);
    }

    /// The cluster id requests carry (0: none).
    pub fn expected_cluster_id(&self) -> u64 {
        self.inner.stamp.0.load(Ordering::Relaxed)
    }

    /// PD's cluster id: random, non-zero, minted by PD on first need and never changed. A PD
    /// that lost its data mints a new one.
    pub async fn cluster_id(&self) -> Result<u64> {
        let id = self
            .call(false, |mut c| async move {
                let r = c
                    .get_cluster_id(pb::GetClusterIdRequest {})
                    .await?
                    .into_inner();
                Ok((r.cluster_id, r.error))
            })
            .await?;
        if id == 0 {
            return Err(Error::Unavailable(
                "PD answered cluster id 0, which is not an id".into(),
            ));
        }
        Ok(id)
    }

    /// The endpoints this client knows (the configured ones plus leaders it was pointed to).
    pub fn endpoints(&self) -> Vec<String> {
        self.inner.endpoints.addrs()
    }

    /// The endpoint that answered last as leader, if the cache holds one.
    pub fn leader(&self) -> Option<String> {
        self.inner.endpoints.leader()
    }

    /// One timestamp, greater than any timestamp PD handed out before this call began.
    ///
    /// Concurrent callers share requests (see the module docs); the call waits at most the
    /// options' deadline.
    pub async fn timestamp(&self) -> Result<Timestamp> {
        let deadline = self.deadline();
        let (tx, rx) = oneshot::channel();
        let start_driver = {
            let mut q = lock(&self.inner.tso);
            q.waiting.push_back((deadline, tx));
            !std::mem::replace(&mut q.driving, true)
        };
        if start_driver {
            let me = self.clone();
            tokio::spawn(async move { me.drive_tso().await });
        }
        // The batch's request ends by the earliest deadline in it, with its own error; the grace
        // only guards against a driver that never answers.
        match tokio::time::timeout_at(deadline + TSO_GRACE, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Unavailable(
                "the timestamp batch was dropped without an answer".into(),
            )),
            Err(_) => Err(Error::Unavailable(format!(
                "no timestamp within the deadline ({})",
                human_duration(self.inner.opts.deadline)
            ))),
        }
    }

    /// Serves the timestamp queue until it is empty: one request per batch of waiting callers.
    async fn drive_tso(&self) {
        let mut guard = Driving {
            queue: &self.inner.tso,
            finished: false,
        };
        loop {
            let batch: Vec<_> = {
                let mut q = lock(&self.inner.tso);
                // Callers that gave up need no timestamp.
                q.waiting.retain(|(_, tx)| !tx.is_closed());
                if q.waiting.is_empty() {
                    q.driving = false;
                    guard.finished = true;
                    return;
                }
                let n = q.waiting.len().min(MAX_TSO_BATCH as usize);
                q.waiting.drain(..n).collect()
            };
            let deadline = batch
                .iter()
                .map(|(d, _)| *d)
                .min()
                .unwrap_or_else(Instant::now);
            match self.timestamps_until(batch.len() as u32, deadline).await {
                Ok((first, count)) => {
                    let mut batch = batch.into_iter();
                    for (i, (_, tx)) in batch.by_ref().take(count as usize).enumerate() {
                        let ts = Timestamp {
                            physical: first.physical,
                            logical: first.logical + i as u16,
                        };
                        let _ = tx.send(Ok(ts));
                    }
                    // PD gave fewer than asked: the rest wait for the next request.
                    let mut q = lock(&self.inner.tso);
                    for waiter in batch.rev() {
                        q.waiting.push_front(waiter);
                    }
                }
                Err(e) => {
                    for (_, tx) in batch {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// `count` consecutive timestamps (1 to [`MAX_TSO_BATCH`]), in one request: the first, and
    /// how many PD gave (at most `count`). They share `physical`; `logical` counts up.
    pub async fn timestamps(&self, count: u32) -> Result<(Timestamp, u32)> {
        self.timestamps_until(count, self.deadline()).await
    }

    async fn timestamps_until(&self, count: u32, deadline: Instant) -> Result<(Timestamp, u32)> {
        if count == 0 || count > MAX_TSO_BATCH {
            return Err(Error::InvalidArgument(format!(
                "timestamps: count {count} is outside 1..={MAX_TSO_BATCH}"
            )));
        }
        let r = self
            .call_until(false, deadline, move |mut c| async move {
                let r = c.tso(pb::TsoRequest { count }).await?.into_inner();
                Ok(((r.first, r.count), r.error))
            })
            .await?;
        match r {
            (Some(first), n)
                if n >= 1
                    && n <= count
                    && first.logical <= u64::from(MAX_TSO_BATCH - n)
                    && first.physical >> (64 - Timestamp::LOGICAL_BITS) == 0 =>
            {
                Ok((
                    Timestamp {
                        physical: first.physical,
                        logical: first.logical as u16,
                    },
                    n,
                ))
            }
            (first, n) => {
                let first = match first {
                    Some(t) => format!("physical {} logical {}", t.physical, t.logical),
                    None => "none".into(),
                };
                Err(Error::Unavailable(format!(
                    "PD answered {count} timestamps with a malformed range (first {first}, count {n})"
                )))
            }
        }
    }

    /// `count` ids never handed out before or again; returns the first (the ids are
    /// `first .. first + count - 1`).
    pub async fn alloc_ids(&self, count: u32) -> Result<u64> {
        if count == 0 {
            return Err(Error::InvalidArgument("alloc_ids: count is 0".into()));
        }
        let (first, n) = self
            .call(false, move |mut c| async move {
                let r = c.alloc_id(pb::AllocIdRequest { count }).await?.into_inner();
                Ok(((r.first, r.count), r.error))
            })
            .await?;
        if n != count {
            return Err(Error::Unavailable(format!(
                "PD answered a request for {count} ids with {n}"
            )));
        }
        Ok(first)
    }

    /// Whether the cluster has its first store and region.
    pub async fn is_bootstrapped(&self) -> Result<bool> {
        self.call(false, |mut c| async move {
            let r = c
                .is_bootstrapped(pb::IsBootstrappedRequest {})
                .await?
                .into_inner();
            Ok((r.bootstrapped, r.error))
        })
        .await
    }

    /// The cluster's replication factor as PD recorded it at bootstrap (the first region's
    /// peer count): `None` before bootstrap, `Some(0)` for a cluster bootstrapped before PD
    /// recorded it.
    pub async fn bootstrapped_replicas(&self) -> Result<Option<u32>> {
        self.call(false, |mut c| async move {
            let r = c
                .is_bootstrapped(pb::IsBootstrappedRequest {})
                .await?
                .into_inner();
            Ok((r.bootstrapped.then_some(r.replicas), r.error))
        })
        .await
    }

    /// Records the first store (with its token, as in [`PdClient::put_store`]) and the first
    /// region (which must cover every key). Once only: [`Error::AlreadyBootstrapped`] after
    /// that.
    pub async fn bootstrap(&self, store: Store, region: Region, store_token: u64) -> Result<()> {
        let req = pb::BootstrapRequest {
            store: Some(store.into()),
            region: Some(region.into()),
            store_token,
        };
        self.call(true, move |mut c| {
            let req = req.clone();
            async move { Ok(((), c.bootstrap(req).await?.into_inner().error)) }
        })
        .await
    }

    /// Bootstraps a cluster restored from a backup: records every region at once (in key
    /// order, tiling the key space; their peers on stores whose ids [`PdClient::alloc_ids`]
    /// handed out, which register themselves when they start). Once only, like
    /// [`PdClient::bootstrap`]: [`Error::AlreadyBootstrapped`] after any bootstrap.
    pub async fn bootstrap_regions(&self, regions: Vec<Region>) -> Result<()> {
        let req = pb::BootstrapRegionsRequest {
            regions: regions.into_iter().map(Into::into).collect(),
        };
        self.call(true, move |mut c| {
            let req = req.clone();
            async move { Ok(((), c.bootstrap_regions(req).await?.into_inner().error)) }
        })
        .await
    }

    /// Registers a store or updates its address. `store_token` is the random number the store
    /// minted when it claimed its id: PD keeps the first one it is given, and refuses
    /// ([`Error::InvalidArgument`]) a later call for that id with another, so only the store
    /// itself can move. PD refuses an id it never handed out, and a tombstoned store.
    pub async fn put_store(&self, store: Store, store_token: u64) -> Result<()> {
        let req = pb::PutStoreRequest {
            store: Some(store.into()),
            store_token,
        };
        self.call(true, move |mut c| {
            let req = req.clone();
            async move { Ok(((), c.put_store(req).await?.into_inner().error)) }
        })
        .await
    }

    /// The store with this id; `None` if PD has none.
    pub async fn get_store(&self, id: u64) -> Result<Option<Store>> {
        let r = self
            .call(false, move |mut c| async move {
                let r = c
                    .get_store(pb::GetStoreRequest { store_id: id })
                    .await?
                    .into_inner();
                Ok((r.store, r.error))
            })
            .await;
        not_found_as_none(r).map(|s| s.flatten().map(Store::from))
    }

    /// Every store, tombstoned ones too unless `exclude_tombstones`.
    pub async fn get_all_stores(&self, exclude_tombstones: bool) -> Result<Vec<Store>> {
        let stores = self
            .call(false, move |mut c| async move {
                let r = c
                    .get_all_stores(pb::GetAllStoresRequest { exclude_tombstones })
                    .await?
                    .into_inner();
                Ok((r.stores, r.error))
            })
            .await?;
        Ok(stores.into_iter().map(Store::from).collect())
    }

    /// Marks a store Tombstone: removed for good. [`Error::NotFound`] if PD has no such store,
    /// [`Error::FailedPrecondition`] while PD's region map names a replica on it.
    pub async fn set_store_tombstone(&self, id: u64) -> Result<()> {
        self.set_store_state(id, StoreState::Tombstone).await
    }

    /// Starts removing store `id` (`Offline`): PD moves its regions' peers to other stores and
    /// then tombstones it; `Up` cancels. Refused ([`Error::InvalidArgument`] or a failed
    /// precondition) when fewer stores than the replication factor would be left.
    pub async fn remove_store(&self, id: u64, cancel: bool) -> Result<()> {
        let state = if cancel {
            StoreState::Up
        } else {
            StoreState::Offline
        };
        self.set_store_state(id, state).await
    }

    async fn set_store_state(&self, id: u64, state: StoreState) -> Result<()> {
        let req = pb::SetStoreStateRequest {
            store_id: id,
            state: state.into(),
        };
        self.call(true, move |mut c| async move {
            Ok(((), c.set_store_state(req).await?.into_inner().error))
        })
        .await
    }

    /// A store says it is alive.
    pub async fn store_heartbeat(&self, stats: StoreStats) -> Result<()> {
        let req = pb::StoreHeartbeatRequest {
            store_id: stats.store_id,
            region_count: stats.region_count,
            capacity_bytes: stats.capacity_bytes,
            available_bytes: stats.available_bytes,
            used_bytes: stats.used_bytes,
        };
        self.call(false, move |mut c| async move {
            Ok(((), c.store_heartbeat(req).await?.into_inner().error))
        })
        .await
    }

    /// A region's leader reports the region; PD answers with the next scheduling step for it,
    /// if any. [`Error::StaleEpoch`] when PD holds a newer epoch.
    pub async fn region_heartbeat(
        &self,
        region: Region,
        leader: Peer,
        approximate_size: u64,
        approximate_keys: u64,
    ) -> Result<Option<OperatorStep>> {
        let req = pb::RegionHeartbeatRequest {
            region: Some(region.into()),
            leader: Some(leader.into()),
            approximate_size,
            approximate_keys,
        };
        self.call(false, move |mut c| {
            let req = req.clone();
            async move {
                let r = c.region_heartbeat(req).await?.into_inner();
                Ok((r.operator.and_then(OperatorStep::from_pb), r.error))
            }
        })
        .await
    }

    /// The region whose range holds `key`; `None` if none does (not bootstrapped).
    pub async fn get_region(&self, key: impl Into<Vec<u8>>) -> Result<Option<RegionInfo>> {
        let key = key.into();
        let r = self
            .call(false, move |mut c| {
                let req = pb::GetRegionRequest { key: key.clone() };
                async move {
                    let r = c.get_region(req).await?.into_inner();
                    let err = r.error.clone();
                    Ok((RegionInfo::from_pb(r), err))
                }
            })
            .await;
        not_found_as_none(r).map(Option::flatten)
    }

    /// The region with this id; `None` if PD has none.
    pub async fn get_region_by_id(&self, id: u64) -> Result<Option<RegionInfo>> {
        let r = self
            .call(false, move |mut c| async move {
                let r = c
                    .get_region_by_id(pb::GetRegionByIdRequest { region_id: id })
                    .await?
                    .into_inner();
                let err = r.error.clone();
                Ok((RegionInfo::from_pb(r), err))
            })
            .await;
        not_found_as_none(r).map(Option::flatten)
    }

    /// Regions overlapping `[start, end)` (empty `end`: no bound), in key order; at most
    /// `limit` of them (0: no limit). PD answers in pages of about 1 MiB; this asks for every
    /// page (each within the deadline) and returns them together.
    pub async fn scan_regions(
        &self,
        start: impl Into<Vec<u8>>,
        end: impl Into<Vec<u8>>,
        limit: u32,
    ) -> Result<Vec<RegionInfo>> {
        let end = end.into();
        let mut start = start.into();
        let mut out: Vec<RegionInfo> = Vec::new();
        loop {
            let left = if limit == 0 {
                0
            } else {
                limit - out.len() as u32
            };
            let req = pb::ScanRegionsRequest {
                start_key: start,
                end_key: end.clone(),
                limit: left,
            };
            let (page, next) = self
                .call(false, move |mut c| {
                    let req = req.clone();
                    async move {
                        let r = c.scan_regions(req).await?.into_inner();
                        let regions = r
                            .regions
                            .into_iter()
                            .filter_map(RegionInfo::from_pb)
                            .collect::<Vec<_>>();
                        Ok(((regions, r.next_start_key), r.error))
                    }
                })
                .await?;
            let got = page.len();
            out.extend(page);
            let done = limit != 0 && out.len() >= limit as usize;
            if next.is_empty() || done {
                out.truncate(if limit == 0 {
                    usize::MAX
                } else {
                    limit as usize
                });
                return Ok(out);
            }
            if got == 0 {
                return Err(Error::Unavailable(
                    "PD answered an empty page of regions with more to come".into(),
                ));
            }
            start = next;
        }
    }

    /// The PD nodes (PD's live membership, as the answering node applied it) and which one
    /// leads. Their client addresses join the endpoints this client tries, so a client given
    /// an older list of PD nodes also reaches the ones added since.
    pub async fn get_members(&self) -> Result<Members> {
        let members = self.get_members_until(self.deadline()).await?;
        self.learn(&members);
        Ok(members)
    }

    /// PD's members from any node, or from the leader it names when that one answers too
    /// (only the leader knows how far each member holds the log).
    async fn get_members_until(&self, deadline: Instant) -> Result<Members> {
        let m: Members = self
            .call_until(false, deadline, |mut c| async move {
                let r = c.get_members(pb::GetMembersRequest {}).await?.into_inner();
                let error = r.error.clone();
                Ok((Members::from(r), error))
            })
            .await?;
        let Some(leader) = m.leader.clone().filter(|l| l.id != m.node_id) else {
            return Ok(m);
        };
        let Ok(mut c) = self.client_for(&leader.client_addr) else {
            return Ok(m);
        };
        let budget = self
            .inner
            .opts
            .attempt_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(budget, c.get_members(pb::GetMembersRequest {})).await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                if r.error.is_none() && r.node_id == leader.id {
                    self.inner.endpoints.set_leader(Some(leader.client_addr));
                    return Ok(Members::from(r));
                }
                Ok(m)
            }
            _ => Ok(m),
        }
    }

    /// Changes PD's own membership (add, promote, remove PD nodes) through the PD leader's log
    /// and returns the members once the change applied there; several steps touching voters
    /// run as joint consensus. Retried like a write; a change found already in effect
    /// succeeds, so retrying after an `Indeterminate` is safe.
    pub async fn change_members(&self, changes: &[crate::MemberChange]) -> Result<Members> {
        let deadline = self.deadline();
        let req = pb::ChangeMembersRequest {
            changes: changes.iter().map(pd_change).collect(),
        };
        let r = self
            .call_until(true, deadline, |mut c| {
                let req = req.clone();
                async move {
                    let r = c.change_members(req).await?.into_inner();
                    Ok((r.members, r.error))
                }
            })
            .await;
        let members = match r {
            Ok(members) => Members {
                members: members.into_iter().map(Member::from).collect(),
                ..Default::default()
            },
            // Whether the change took effect after all is checked within the same deadline.
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(e) => match self.get_members_until(deadline).await {
                Ok(m) if m.leader.is_some() && changes.iter().all(|c| m.hold(c)) => m,
                _ => return Err(e),
            },
        };
        self.learn(&members);
        Ok(members)
    }

    /// Adds the client addresses of `members` to the endpoints this client tries.
    fn learn(&self, members: &Members) {
        for m in &members.members {
            if !m.client_addr.is_empty() {
                // Connecting is lazy: this only records the endpoint.
                let _ = self.client_for(&m.client_addr);
            }
        }
    }

    /// PD's running operators and the latest that ended (`operator list`), from its leader.
    pub async fn operators(&self) -> Result<Vec<OperatorRecord>> {
        self.call(false, |mut c| async move {
            let r = c
                .get_operators(pb::GetOperatorsRequest {})
                .await?
                .into_inner();
            let ops = r.operators.into_iter().map(OperatorRecord::from).collect();
            Ok((ops, r.error))
        })
        .await
    }

    /// The deadline of a call starting now.
    fn deadline(&self) -> Instant {
        Instant::now() + self.inner.opts.deadline
    }

    /// Runs `f` against the PD leader until it answers, the options' deadline passes, or the
    /// error is final. `write` marks calls whose effect may happen even when no answer arrives:
    /// at the deadline their outcome is [`Error::Indeterminate`] unless no attempt could have
    /// reached a server.
    async fn call<T, F, Fut>(&self, write: bool, f: F) -> Result<T>
    where
        F: Fn(PdGrpc) -> Fut,
        Fut: Future<Output = std::result::Result<(T, Option<pb::Error>), tonic::Status>>,
    {
        self.call_until(write, self.deadline(), f).await
    }

    /// [`PdClient::call`] with an explicit deadline.
    async fn call_until<T, F, Fut>(&self, write: bool, deadline: Instant, f: F) -> Result<T>
    where
        F: Fn(PdGrpc) -> Fut,
        Fut: Future<Output = std::result::Result<(T, Option<pb::Error>), tonic::Status>>,
    {
        let opts = &self.inner.opts;
        let mut backoff = opts.backoff_min;
        let mut maybe_applied = false;
        let mut last_err = Error::Unavailable("no PD node answered".into());
        let mut target = self.pick_target();
        let mut redirects = 0;
        // NOT_LEADER answers without a hint since the last pause.
        let mut unhinted = 0;
        // Whether any attempt has ended yet (so `last_err` says something).
        let mut answered = false;
        // Attempts past their turn that run on ([`crate::attempts`]), and the nodes passed over
        // since the last pause because one of them runs there.
        let mut attempts = Attempts::new(opts, no_error::<T>);
        let mut passed = 0;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(at_deadline(last_err, write && maybe_applied, opts.deadline));
            }
            let busy = attempts.is_running(&target);
            if busy && passed < self.endpoint_count() {
                // Still waiting for that node: ask another one meanwhile.
                passed += 1;
                target = self.rotate();
                continue;
            }
            let attempt = if busy {
                // Every node was passed over: wait for the attempts still running.
                Err(NoAnswer::Busy)
            } else {
                let client = self.client_for(&target)?;
                match attempts
                    .wait(target.clone(), target.clone(), f(client), deadline)
                    .await
                {
                    Waited::Answered(t, answer) | Waited::Earlier(t, answer) => {
                        target = t;
                        Ok(answer)
                    }
                    Waited::TurnOver => Err(NoAnswer::TurnOver),
                }
            };
            let next = match attempt {
                Ok(Ok((value, None))) => {
                    self.inner.endpoints.set_leader(Some(target));
                    return Ok(value);
                }
                Ok(Ok((_, Some(e)))) => match pb::ErrorCode::try_from(e.code) {
                    Ok(pb::ErrorCode::InvalidArgument) => {
                        return Err(Error::InvalidArgument(e.message))
                    }
                    Ok(pb::ErrorCode::StaleEpoch) => return Err(Error::StaleEpoch(e.message)),
                    Ok(pb::ErrorCode::AlreadyBootstrapped) => {
                        return Err(Error::AlreadyBootstrapped(e.message))
                    }
                    Ok(pb::ErrorCode::NotFound) => return Err(Error::NotFound(e.message)),
                    Ok(pb::ErrorCode::FailedPrecondition) => {
                        return Err(Error::FailedPrecondition(e.message))
                    }
                    Ok(pb::ErrorCode::ClusterMismatch) => {
                        return Err(Error::ClusterMismatch(format!(
                            "PD at {target}: {}",
                            e.message
                        )))
                    }
                    Ok(pb::ErrorCode::NotLeader) => {
                        let hint = e.leader.filter(|m| !m.client_addr.is_empty());
                        last_err = Error::NotLeader {
                            leader_id: hint.as_ref().map(|h| h.id),
                            leader_addr: hint.as_ref().map(|h| h.client_addr.clone()),
                        };
                        match hint {
                            Some(h) if h.client_addr != target && redirects < 3 => {
                                Next::Redirect(h.client_addr)
                            }
                            _ => Next::Elsewhere,
                        }
                    }
                    Ok(pb::ErrorCode::Indeterminate) => {
                        // Safe to retry for every PD call (pd.proto).
                        maybe_applied = true;
                        last_err = Error::Indeterminate(format!("{target}: {}", e.message));
                        Next::Backoff
                    }
                    _ => {
                        last_err = Error::Unavailable(format!("{target}: {}", e.message));
                        Next::Backoff
                    }
                },
                Ok(Err(status)) if is_refused_input(&status) => {
                    return Err(Error::InvalidArgument(status.message().to_string()));
                }
                Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                    return Err(crate::error::unimplemented(
                        &target,
                        crate::error::PD_API,
                        &status,
                    ));
                }
                Ok(Err(status)) => {
                    if !is_connect_failure(&status) {
                        maybe_applied = true;
                    }
                    last_err = Error::Unavailable(format!("{target}: {}", status.message()));
                    Next::Backoff
                }
                Err(NoAnswer::TurnOver) => {
                    maybe_applied = true;
                    // An attempt the deadline cut short says less than the answer before it.
                    if !answered || Instant::now() < deadline {
                        last_err = Error::Unavailable(format!("{target}: attempt timed out"));
                    }
                    Next::Backoff
                }
                Err(NoAnswer::Busy) => Next::Backoff,
            };
            answered = true;
            self.inner.endpoints.set_leader(None);
            match next {
                Next::Redirect(addr) => {
                    redirects += 1;
                    target = addr;
                }
                Next::Elsewhere if unhinted + 1 < self.endpoint_count() => {
                    unhinted += 1;
                    target = self.rotate();
                }
                Next::Elsewhere | Next::Backoff => {
                    redirects = 0;
                    unhinted = 0;
                    passed = 0;
                    let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
                    // An attempt still running may answer meanwhile.
                    if let Some((t, Ok((value, None)))) =
                        attempts.pause_until(Instant::now() + pause).await
                    {
                        self.inner.endpoints.set_leader(Some(t));
                        return Ok(value);
                    }
                    backoff = (backoff * 2).min(opts.backoff_max);
                    target = self.rotate();
                }
            }
        }
    }

    fn pick_target(&self) -> String {
        self.inner.endpoints.pick_target()
    }

    fn rotate(&self) -> String {
        self.inner.endpoints.rotate()
    }

    fn endpoint_count(&self) -> usize {
        self.inner.endpoints.len()
    }

    fn client_for(&self, endpoint: &str) -> Result<PdGrpc> {
        let opts = &self.inner.opts;
        self.inner
            .endpoints
            .client_for(endpoint, |a| connect(a, opts, &self.inner.stamp))
    }
}

/// One step of a change of PD's membership on the wire.
fn pd_change(c: &crate::MemberChange) -> pb::MemberChange {
    use crate::MemberChange as C;
    let (ty, id, peer_addr, client_addr) = match c {
        C::AddVoter {
            id,
            peer_addr,
            client_addr,
        } => (pb::MemberChangeType::AddVoter, *id, peer_addr, client_addr),
        C::AddLearner {
            id,
            peer_addr,
            client_addr,
        } => (
            pb::MemberChangeType::AddLearner,
            *id,
            peer_addr,
            client_addr,
        ),
        C::Promote(id) => (
            pb::MemberChangeType::Promote,
            *id,
            &String::new(),
            &String::new(),
        ),
        C::Remove(id) => (
            pb::MemberChangeType::Remove,
            *id,
            &String::new(),
            &String::new(),
        ),
    };
    pb::MemberChange {
        r#type: ty as i32,
        id,
        peer_addr: peer_addr.clone(),
        client_addr: client_addr.clone(),
    }
}

/// Why an attempt gave no answer.
enum NoAnswer {
    /// Its turn passed; it runs on.
    TurnOver,
    /// Not sent: an earlier attempt at the same node still runs.
    Busy,
}

/// Whether an answer ends a call: no error in it.
fn no_error<T>(answer: &std::result::Result<(T, Option<pb::Error>), tonic::Status>) -> bool {
    matches!(answer, Ok((_, None)))
}

/// The error of a call whose deadline passed; it says so.
fn at_deadline(last: Error, maybe_applied: bool, budget: Duration) -> Error {
    match last {
        _ if maybe_applied => Error::Indeterminate(format!(
            "outcome unknown at the deadline ({}); last error: {last}",
            human_duration(budget)
        )),
        // The PD group kept redirecting: the typed hint is the most useful answer.
        Error::NotLeader { .. } => last,
        Error::Unavailable(m) => Error::Unavailable(format!(
            "no PD leader answered within the deadline ({}); last error: {m}",
            human_duration(budget)
        )),
        other => Error::Unavailable(format!(
            "no PD leader answered within the deadline ({}); last error: {other}",
            human_duration(budget)
        )),
    }
}

/// PD's NOT_FOUND as `Ok(None)`, for lookups.
fn not_found_as_none<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(Error::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

fn connect(addr: &str, opts: &Options, stamp: &Stamp) -> Result<PdGrpc> {
    Ok(PdGrpcClient::with_interceptor(
        channel_lazy(addr, opts)?,
        stamp.clone(),
    ))
}

#[cfg(test)]
pub(crate) mod tests;
