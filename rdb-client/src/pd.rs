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

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use rdb_proto::pd as pb;

use crate::{Error, Options, Result};

mod call;
mod members;
mod tso;
mod types;

use call::{connect, PdGrpc, Stamp};
use tso::TsoQueue;
pub use tso::MAX_TSO_BATCH;
pub use types::*;

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
}

/// PD's NOT_FOUND as `Ok(None)`, for lookups.
fn not_found_as_none<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(Error::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
pub(crate) mod tests;
