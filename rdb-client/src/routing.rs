//! PD mode ([`Client::with_pd`]): each request goes to the leader of its key's region, with the
//! region's id and epoch as its context.
//!
//! The client keeps a [`RegionCache`] fed by a [`PdClient`]. Before each attempt the retry loop
//! ([`crate::retry`]) looks the key up in the cache; on a miss it asks PD for the key's region
//! ([`PdClient::get_region`]) and for the address of the store of the peer it picks
//! ([`PdClient::get_store`]), both within the call's deadline. The peer is the cached leader
//! (or, with no leader known, the region's first peer), and after each failed attempt the next
//! peer in turn; once every peer failed, the region is dropped and fetched again.
//!
//! Stores correct the cache: a `NotLeader` hint records the leader (peer and store address)
//! and the request follows it at once; `EpochNotMatch` replaces the region with the regions the
//! store sent; `KeyNotInRegion` and `RegionNotFound` drop the region so that PD is asked again.
//! None of these proposed anything, so a write is retried with the same request id.
//!
//! A store that gives no answer at its cached address (refused, broken, silent past its turn)
//! may have restarted elsewhere: its address is looked up in PD again before the next attempt
//! there, with a doubling pause between look-ups while it stays unreachable
//! ([`Routing::on_store_failure`]).
//!
//! Batch calls are cut by region ([`RegionCache::group_keys`]) and each part is one request,
//! with its own request id for writes. A part whose keys a split spread over several regions
//! is cut again; the pieces keep the part's request id, which is safe because a split copies
//! the region's dedup records to the new region. A batch is atomic per region only.
//!
//! Scans need no cutting: a store answers only its region's part of a range and says where the
//! next region starts, and [`Client::scan`] routes each page by its start key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdb_proto::kv::kv_client::KvClient;
use rdb_proto::kv::{Error as PbError, LeaderHint, RegionContext, RequestId};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::pd::Peer;
use crate::regions::{CachedRegion, RegionCache};
use crate::route::{Outcome, Progress, Route, Target};
use crate::{escape_bytes, lock, Client, Error, Options, PdClient, ReadConsistency, Result};

/// The PD side of a PD-mode client: the placement driver and the regions learned from it.
pub(crate) struct Routing {
    pub(crate) pd: PdClient,
    pub(crate) cache: Arc<RegionCache>,
    /// Stores whose cached address failed, and when PD may be asked for it again.
    stale_stores: Mutex<HashMap<u64, Refresh>>,
    /// The longest a store address refresh may wait for PD before the cached address is used.
    refresh_wait: Duration,
    /// First and longest pause between two refreshes of one store's address.
    refresh_backoff: (Duration, Duration),
}

/// When a store's failed address is looked up in PD again.
struct Refresh {
    /// Not before this.
    after: Instant,
    /// The pause after the next look-up (doubles up to the longest).
    backoff: Duration,
}

impl Routing {
    /// Routing through `pd` with an empty cache; `opts` time the store address refreshes.
    fn new(pd: PdClient, opts: &Options) -> Routing {
        Routing {
            pd,
            cache: Arc::new(RegionCache::new()),
            stale_stores: Mutex::new(HashMap::new()),
            refresh_wait: crate::attempts::turn(opts),
            refresh_backoff: (opts.backoff_min, opts.backoff_max),
        }
    }

    /// Where the next attempt for `keys` goes: the store of the region's leader, or `skip`
    /// peers past it. `None` when the keys no longer lie in one region.
    pub(crate) async fn target(
        &self,
        keys: &[&[u8]],
        skip: usize,
        deadline: Instant,
    ) -> Result<Option<Target>> {
        let Some(first) = keys.first() else {
            return Err(Error::InvalidArgument(
                "a routed request needs a key".into(),
            ));
        };
        let region = match self.cache.locate(first) {
            Some(r) => r,
            None => self.load(first, deadline).await?,
        };
        if !keys.iter().all(|k| region.contains(k)) {
            return Ok(None);
        }
        let peers = &region.region.peers;
        if peers.is_empty() {
            self.cache.invalidate(region.region.id);
            return Err(Error::Unavailable(format!(
                "region {} has no peers",
                region.region.id
            )));
        }
        let leader = region
            .leader
            .and_then(|l| peers.iter().position(|p| *p == l));
        let peer = peers[(leader.unwrap_or(0) + skip) % peers.len()];
        let addr = match self.store_address(peer.store_id, deadline).await {
            Ok(a) => a,
            Err(e) => {
                self.cache.invalidate(region.region.id);
                return Err(e);
            }
        };
        Ok(Some(Target {
            addr,
            region: Some((region, peer)),
        }))
    }

    /// Fetches the region holding `key` from PD into the cache.
    async fn load(&self, key: &[u8], deadline: Instant) -> Result<CachedRegion> {
        let info = pd_call(deadline, self.pd.get_region(key))
            .await?
            .ok_or_else(|| {
                Error::Unavailable(format!(
                    "PD knows no region holding '{}' (not bootstrapped?)",
                    escape_bytes(key)
                ))
            })?;
        self.cache.insert(info);
        // The cache refuses a region older than one it holds; that one is newer than PD's map.
        self.cache.locate(key).ok_or_else(|| {
            Error::Unavailable(format!(
                "PD's region for '{}' is older than the cached map",
                escape_bytes(key)
            ))
        })
    }

    /// The client address of a store, from the cache or PD. A cached address that failed
    /// ([`Routing::on_store_failure`]) is looked up in PD again (the store may have restarted
    /// on another address), at most once per pause per store, the pause doubling while the
    /// store stays unreachable; if PD does not answer soon, the cached address is used.
    pub(crate) async fn store_address(&self, store_id: u64, deadline: Instant) -> Result<String> {
        let cached = self.cache.store_address(store_id);
        if let Some(addr) = &cached {
            if !self.refresh_due(store_id) {
                return Ok(addr.clone());
            }
        }
        let wait = match cached {
            Some(_) => deadline.min(Instant::now() + self.refresh_wait),
            None => deadline,
        };
        match (pd_call(wait, self.pd.get_store(store_id)).await, cached) {
            (Ok(Some(store)), _) if !store.address.is_empty() => {
                self.cache.set_store(store_id, store.address.clone());
                Ok(store.address)
            }
            (Ok(_), None) => Err(Error::Unavailable(format!(
                "PD knows no address of store {store_id}"
            ))),
            (Err(e), None) => Err(e),
            // PD is away or has nothing better: keep trying the address the client has.
            (_, Some(addr)) => Ok(addr),
        }
    }

    /// Whether the failed address of `store_id` is due to be looked up in PD again; if so, the
    /// next look-up is scheduled one (doubled) pause later.
    fn refresh_due(&self, store_id: u64) -> bool {
        let mut stale = lock(&self.stale_stores);
        let Some(r) = stale.get_mut(&store_id) else {
            return false;
        };
        let now = Instant::now();
        if now < r.after {
            return false;
        }
        r.after = now + r.backoff;
        r.backoff = (r.backoff * 2).min(self.refresh_backoff.1);
        true
    }

    /// An attempt at `store_id`'s cached address got no answer (refused, broken, or silent):
    /// look the address up in PD again before the next attempt there.
    pub(crate) fn on_store_failure(&self, store_id: u64) {
        lock(&self.stale_stores)
            .entry(store_id)
            .or_insert_with(|| Refresh {
                after: Instant::now(),
                backoff: self.refresh_backoff.0,
            });
    }

    /// `store_id` answered: its cached address works.
    pub(crate) fn on_store_answer(&self, store_id: u64) {
        let mut stale = lock(&self.stale_stores);
        if !stale.is_empty() {
            stale.remove(&store_id);
        }
    }

    /// Records a `NotLeader` hint for `region` (store address and leader); returns the leader.
    pub(crate) fn on_not_leader(&self, region: &CachedRegion, hint: &LeaderHint) -> Peer {
        if hint.id != 0 {
            self.cache.set_store(hint.id, hint.addr.clone());
        }
        let leader = Peer {
            id: hint.peer_id,
            store_id: hint.id,
            learner: false,
        };
        self.cache.update_leader(region.region.id, leader);
        leader
    }

    /// Cuts the batch positions `positions` of `keys` by region, fetching missing regions from
    /// PD (with backoff, until `deadline`).
    async fn group(
        &self,
        keys: &[&[u8]],
        positions: &[usize],
        opts: &Options,
        deadline: Instant,
    ) -> Result<Vec<Vec<usize>>> {
        let subset: Vec<&[u8]> = positions.iter().map(|&i| keys[i]).collect();
        let mut backoff = opts.backoff_min;
        loop {
            let missing = match self.cache.group_keys(&subset) {
                Ok(groups) => {
                    let to_positions = |ix: Vec<usize>| ix.into_iter().map(|j| positions[j]);
                    return Ok(groups
                        .into_iter()
                        .map(|(_, ix)| to_positions(ix).collect())
                        .collect());
                }
                Err(missing) => missing,
            };
            for key in missing {
                match self.load(&key, deadline).await {
                    Ok(_) => {}
                    Err(e @ (Error::InvalidArgument(_) | Error::Unsupported(_))) => return Err(e),
                    Err(e) if Instant::now() + backoff >= deadline => return Err(e),
                    Err(_) => {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(opts.backoff_max);
                        break;
                    }
                }
            }
        }
    }
}

/// A PD call bounded by the caller's deadline.
pub(crate) async fn pd_call<T>(
    deadline: Instant,
    call: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout_at(deadline, call)
        .await
        .unwrap_or_else(|_| Err(Error::Unavailable("PD gave no answer in time".into())))
}

/// One request of a batch call: the positions of its keys in the batch and its request id.
struct Part {
    positions: Vec<usize>,
    request_id: Option<RequestId>,
    progress: Progress,
}

impl Client {
    /// A PD-mode client: finds each key's region and its leader through the PD nodes at
    /// `pd_endpoints` (`host:port`), caching both; see [PD mode](crate#pd-mode).
    /// Connections are made on first use.
    pub fn with_pd<I, S>(pd_endpoints: I, opts: Options) -> Result<Client>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let pd = PdClient::with_options(pd_endpoints, opts.clone())?;
        let routing = Routing::new(pd, &opts);
        Ok(Client::build(
            crate::endpoints::Endpoints::empty(),
            Some(routing),
            opts,
        ))
    }

    /// PD mode: the cache of regions and store addresses the client routes by.
    pub fn region_cache(&self) -> Option<&Arc<RegionCache>> {
        self.inner.routing.as_ref().map(|r| &r.cache)
    }

    /// PD mode: the client of the placement driver.
    pub fn pd(&self) -> Option<&PdClient> {
        self.inner.routing.as_ref().map(|r| &r.pd)
    }

    /// A batch call on `keys`: in PD mode one request per region (see the module docs),
    /// otherwise one request for all. `f` builds a request from the client, the region context,
    /// the positions of the part's keys in `keys` and its request id (writes: `write`; reads
    /// with `consistency`). Returns each part's positions with its answer.
    pub(crate) async fn call_batch<T, F, Fut>(
        &self,
        keys: &[&[u8]],
        write: bool,
        consistency: ReadConsistency,
        f: F,
    ) -> Result<Vec<(Vec<usize>, T)>>
    where
        F: Fn(KvClient<Channel>, Option<RegionContext>, &[usize], Option<RequestId>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<(T, Option<PbError>), tonic::Status>>,
    {
        let deadline = self.deadline();
        let all: Vec<usize> = (0..keys.len()).collect();
        let Some(routing) = &self.inner.routing else {
            let id = write.then(|| self.next_request_id());
            let f = |c, ctx| f(c, ctx, &all, id);
            let answer = if write {
                self.call_key(true, &[], deadline, f).await?
            } else {
                self.call_read_key(consistency, &[], deadline, f).await?
            };
            return Ok(vec![(all, answer)]);
        };
        let any_peer = !write && consistency == ReadConsistency::Serializable;
        let opts = &self.inner.opts;
        // Routed as stored: a namespace's keys lie under its prefix.
        let routed: Vec<_> = keys.iter().map(|k| self.ns.route_key(k)).collect();
        let keys: Vec<&[u8]> = routed.iter().map(|k| k.as_ref()).collect();
        let keys = keys.as_slice();
        let mut pending: Vec<Part> = routing
            .group(keys, &all, opts, deadline)
            .await?
            .into_iter()
            .map(|positions| Part {
                positions,
                request_id: write.then(|| self.next_request_id()),
                progress: Progress::default(),
            })
            .collect();
        let mut done = Vec::new();
        let mut failed = Vec::new();
        while !pending.is_empty() {
            let runs = pending.iter_mut().map(|part| {
                let Part {
                    positions,
                    request_id,
                    progress,
                } = part;
                let part_keys: Vec<&[u8]> = positions.iter().map(|&i| keys[i]).collect();
                let f = &f;
                async move {
                    let route = Route::Region {
                        keys: &part_keys,
                        any_peer,
                    };
                    let f = |c, ctx| f(c, ctx, positions, *request_id);
                    self.run(write, deadline, route, progress, f).await
                }
            });
            let results = futures::future::join_all(runs).await;
            let mut next = Vec::new();
            for (part, result) in pending.into_iter().zip(results) {
                match result {
                    Ok(Outcome::Done(answer)) => done.push((part.positions, answer)),
                    Ok(Outcome::Regroup) => {
                        match routing.group(keys, &part.positions, opts, deadline).await {
                            Ok(groups) => next.extend(groups.into_iter().map(|positions| Part {
                                positions,
                                request_id: part.request_id,
                                progress: part.progress.clone(),
                            })),
                            Err(e) => failed.push(part.progress.fail(write, e)),
                        }
                    }
                    Err(e) => failed.push(e),
                }
            }
            pending = next;
        }
        let Some(first) = failed.first() else {
            return Ok(done);
        };
        let indeterminate = failed.iter().find(|e| matches!(e, Error::Indeterminate(_)));
        Err(match indeterminate {
            Some(e) => e.clone(),
            None if write && !done.is_empty() => Error::Indeterminate(format!(
                "the batch was applied in {} of its per-region requests and failed in {}: {first}",
                done.len(),
                failed.len()
            )),
            None => first.clone(),
        })
    }
}

#[cfg(test)]
mod tests;
