//! Replica checks: every replica of a Raft group hashes its data at the same log index, and
//! the hashes are compared.
//!
//! The group's leader puts a hash point into its log (`Check`); each replica hashes its data
//! when it applies that entry, so all of them hash the same state however far behind they
//! run. Each replica is then asked for its hash (`Hash`) until it has one or the deadline
//! passes. [`Client::check`] does this for the group of the configured endpoints;
//! [`Client::check_regions`] (PD mode) for each region, asking the region's leader for the
//! hash point and the store of every peer of it for its hash.
//!
//! A report names the replicas that differ from the majority of the replicas (more than half
//! of all of them, those that gave no hash included), or says that no majority agrees: the
//! replica the check happened to ask first has no authority over the others.

use std::collections::HashMap;

use futures::StreamExt;
use rdb_proto::kv::{CheckRequest, ErrorCode, HashRequest, RegionContext};
use tokio::time::Instant;

use crate::pd::{Region, RegionInfo};
use crate::route::{region_context, Outcome, Progress, Route};
use crate::routing::pd_call;
use crate::{escape_bytes, Client, Error, Result};

/// Regions whose replicas [`Client::check_regions`] checks at once.
const REGIONS_AT_ONCE: usize = 8;

/// One replica's answer to a replica check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeHash {
    /// The endpoint asked (PD mode: the store's client address; empty if PD gave none).
    pub endpoint: String,
    /// The node's id, when its status answered (PD mode: the store's id, from PD).
    pub node_id: Option<u64>,
    /// Whether the node computed its hash at the check's index before the deadline.
    pub ready: bool,
    /// Hash of every record of the node's data (user data and dedup records); valid if `ready`.
    pub hash: u64,
    /// Records hashed; valid if `ready`.
    pub records: u64,
    /// The node's applied index when it last answered (0 if it never did).
    pub applied_index: u64,
    /// Why the node gave no hash, when it did not.
    pub error: Option<String>,
}

/// How one replica's hash compares with the others' (see [`CheckReport::state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaState {
    /// Its hash is the one a majority of the replicas gave.
    Agrees,
    /// A majority of the replicas gave another hash than this one.
    Differs,
    /// It gave a hash, but no hash was given by a majority of the replicas.
    NoMajority,
    /// It gave no hash before the deadline.
    NoHash,
}

/// Every replica's hash of its data at one log index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// The log index of the hash point every node hashed at.
    pub index: u64,
    /// One entry per replica: per endpoint in endpoint order, or (PD mode) per peer of the
    /// region in the region's order.
    pub nodes: Vec<NodeHash>,
}

impl CheckReport {
    /// True when every node answered with its hash.
    pub fn all_ready(&self) -> bool {
        !self.nodes.is_empty() && self.nodes.iter().all(|n| n.ready)
    }

    /// True when every node answered and all hashes and record counts are equal.
    pub fn consistent(&self) -> bool {
        self.all_ready()
            && self
                .nodes
                .windows(2)
                .all(|w| (w[0].hash, w[0].records) == (w[1].hash, w[1].records))
    }

    /// The (hash, records) that more than half of the replicas gave, counting the ones that
    /// gave no hash among the replicas; `None` when none did.
    pub fn majority(&self) -> Option<(u64, u64)> {
        let mut counts: HashMap<(u64, u64), usize> = HashMap::new();
        for n in self.nodes.iter().filter(|n| n.ready) {
            *counts.entry((n.hash, n.records)).or_default() += 1;
        }
        counts
            .into_iter()
            .find(|&(_, count)| 2 * count > self.nodes.len())
            .map(|(h, _)| h)
    }

    /// How replica `i` (a position in [`CheckReport::nodes`]) compares with the majority.
    pub fn state(&self, i: usize) -> ReplicaState {
        let Some(n) = self.nodes.get(i).filter(|n| n.ready) else {
            return ReplicaState::NoHash;
        };
        match self.majority() {
            Some(m) if m == (n.hash, n.records) => ReplicaState::Agrees,
            Some(_) => ReplicaState::Differs,
            None => ReplicaState::NoMajority,
        }
    }

    /// The replicas whose hash differs from the majority's (none when there is no majority).
    pub fn differing(&self) -> Vec<&NodeHash> {
        self.select(ReplicaState::Differs)
    }

    /// The replicas that gave the majority's hash.
    pub fn agreeing(&self) -> Vec<&NodeHash> {
        self.select(ReplicaState::Agrees)
    }

    /// The replicas that gave no hash.
    pub fn missing(&self) -> Vec<&NodeHash> {
        self.select(ReplicaState::NoHash)
    }

    fn select(&self, state: ReplicaState) -> Vec<&NodeHash> {
        (0..self.nodes.len())
            .filter(|&i| self.state(i) == state)
            .map(|i| &self.nodes[i])
            .collect()
    }
}

/// PD mode: one region's replica check ([`Client::check_regions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionCheck {
    /// The region checked, as the client knew it when its hash point was made (or, if none
    /// could be made, as PD described it).
    pub region: Region,
    /// Every peer's hash at one index of the region's log (node ids are store ids, in the
    /// order of the region's peers), or why no hash point could be made.
    pub report: Result<CheckReport, Error>,
}

impl RegionCheck {
    /// True when a hash point was made and every peer gave the same hash at it.
    pub fn consistent(&self) -> bool {
        self.report.as_ref().is_ok_and(CheckReport::consistent)
    }
}

/// Which regions [`Client::check_regions`] checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionScope {
    /// Every region PD knows.
    All,
    /// The region with this id.
    Id(u64),
    /// The region whose range holds this key.
    Key(Vec<u8>),
}

impl Client {
    /// Checks that the replicas hold the same data: the leader puts a hash point into the
    /// Raft log (following `NotLeader` hints and retrying like a read), then every endpoint is
    /// asked for its hash as of that point until it has one or the deadline passes.
    ///
    /// Returns an error only when no hash point could be made; a node that did not answer in
    /// time is reported in its [`NodeHash`] (`ready == false`). See [`CheckReport::consistent`]
    /// and [`CheckReport::majority`]. A PD-mode client checks regions instead
    /// ([`Client::check_regions`]).
    pub async fn check(&self) -> Result<CheckReport> {
        let deadline = self.deadline();
        let index = self
            .call_until(false, deadline, |mut c| async move {
                let r = c.check(CheckRequest { context: None }).await?.into_inner();
                Ok((r.index, r.error))
            })
            .await?;
        let mut endpoints = self.endpoints();
        endpoints.dedup();
        let futs = endpoints.iter().map(|e| async move {
            let node_id = tokio::time::timeout_at(deadline, self.status_of(e))
                .await
                .ok()
                .and_then(|r| r.ok())
                .map(|s| s.node_id);
            let req = HashRequest {
                index,
                context: None,
            };
            self.hash_of(e.clone(), node_id, req, deadline).await
        });
        let nodes = futures::future::join_all(futs).await;
        Ok(CheckReport { index, nodes })
    }

    /// PD mode: checks the replicas of the regions `scope` names, each on its own: the
    /// region's leader puts a hash point into the region's log, then the store of every peer
    /// of the region (addresses from PD) is asked for the region's hash as of that point until
    /// it has one or the deadline passes. Several regions are checked at once, all within the
    /// client's deadline.
    ///
    /// Returns an error when PD cannot say which regions there are ([`Error::NotFound`] for a
    /// region `scope` names that PD does not know). Each region's own failure to make a hash
    /// point is in its [`RegionCheck::report`]; a peer that gave no hash, in its [`NodeHash`].
    pub async fn check_regions(&self, scope: RegionScope) -> Result<Vec<RegionCheck>> {
        let Some(routing) = &self.inner.routing else {
            return Err(Error::Unsupported(
                "a per-region check needs a PD-mode client (Client::with_pd); use \
                 Client::check for the group of the configured endpoints"
                    .into(),
            ));
        };
        let deadline = self.deadline();
        let pd = &routing.pd;
        let regions = match scope {
            RegionScope::All => {
                pd_call(deadline, pd.scan_regions(Vec::new(), Vec::new(), 0)).await?
            }
            RegionScope::Id(id) => vec![pd_call(deadline, pd.get_region_by_id(id))
                .await?
                .ok_or_else(|| Error::NotFound(format!("PD knows no region {id}")))?],
            RegionScope::Key(key) => vec![pd_call(deadline, pd.get_region(key.clone()))
                .await?
                .ok_or_else(|| {
                    Error::NotFound(format!(
                        "PD knows no region holding '{}'",
                        escape_bytes(&key)
                    ))
                })?],
        };
        Ok(futures::stream::iter(regions)
            .map(|info| self.check_region(info, deadline))
            .buffered(REGIONS_AT_ONCE)
            .collect()
            .await)
    }

    /// One region's check (see [`Client::check_regions`]).
    async fn check_region(&self, info: RegionInfo, deadline: Instant) -> RegionCheck {
        let mut region = info.region.clone();
        let Some(routing) = &self.inner.routing else {
            return RegionCheck {
                region,
                report: Err(Error::Unsupported("not a PD-mode client".into())),
            };
        };
        // Routed by its start key, which a split never moves: the requests find the region
        // and its leader (hints, epoch changes, store moves) like any request for that key.
        routing.cache.insert(info);
        let start = region.start_key.clone();
        let keys = [start.as_slice()];
        let route = Route::Region {
            keys: &keys,
            any_peer: false,
        };
        let made = self
            .run(
                false,
                deadline,
                route,
                &mut Progress::default(),
                |mut c, context: Option<RegionContext>| async move {
                    let id = context.as_ref().map_or(0, |c| c.region_id);
                    let r = c.check(CheckRequest { context }).await?.into_inner();
                    Ok(((id, r.index), r.error))
                },
            )
            .await;
        let (id, index) = match made {
            Ok(Outcome::Done(made)) => made,
            Ok(Outcome::Regroup) => {
                let e = Error::Unavailable("the region moved while it was checked".into());
                return RegionCheck {
                    region,
                    report: Err(e),
                };
            }
            Err(e) => {
                return RegionCheck {
                    region,
                    report: Err(e),
                }
            }
        };
        // The peers as the client knew the region when its leader took the hash point.
        if let Some(cached) = routing.cache.get(id) {
            region = cached.region;
        }
        let context = region_context(&region);
        let futs = region.peers.iter().map(|peer| {
            let req = HashRequest {
                index,
                context: Some(context),
            };
            async move {
                match routing.store_address(peer.store_id, deadline).await {
                    Ok(addr) => self.hash_of(addr, Some(peer.store_id), req, deadline).await,
                    Err(e) => NodeHash {
                        node_id: Some(peer.store_id),
                        error: Some(e.to_string()),
                        ..NodeHash::default()
                    },
                }
            }
        });
        let nodes = futures::future::join_all(futs).await;
        RegionCheck {
            region,
            report: Ok(CheckReport { index, nodes }),
        }
    }

    /// Asks `endpoint` (node `node_id`) for its hash as `req` says until it is ready, fails
    /// for good, or `deadline`.
    async fn hash_of(
        &self,
        endpoint: String,
        node_id: Option<u64>,
        req: HashRequest,
        deadline: Instant,
    ) -> NodeHash {
        let index = req.index;
        let mut out = NodeHash {
            endpoint: endpoint.clone(),
            node_id,
            ..NodeHash::default()
        };
        let client = match self.client_for(&endpoint) {
            Ok(c) => c,
            Err(e) => {
                out.error = Some(e.to_string());
                return out;
            }
        };
        let opts = &self.inner.opts;
        let mut backoff = opts.backoff_min;
        loop {
            let now = Instant::now();
            if now >= deadline {
                out.error.get_or_insert_with(|| "no answer in time".into());
                return out;
            }
            let mut c = client.clone();
            let attempt =
                tokio::time::timeout(opts.attempt_timeout.min(deadline - now), c.hash(req)).await;
            match attempt {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    match r.error {
                        Some(e) if e.code == ErrorCode::InvalidArgument as i32 => {
                            out.error = Some(e.message);
                            return out;
                        }
                        // Others pass (a store that has not created a new region yet says
                        // REGION_NOT_FOUND): ask again.
                        Some(e) => out.error = Some(e.message),
                        None => {
                            out.applied_index = r.applied_index;
                            if r.ready {
                                out.ready = true;
                                out.hash = r.hash;
                                out.records = r.records;
                                out.error = None;
                                return out;
                            }
                            out.error = Some(format!(
                                "not ready: applied {} of hash point {index}",
                                r.applied_index
                            ));
                        }
                    }
                }
                Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => {
                    out.error = Some(Error::Unsupported(s.message().to_string()).to_string());
                    return out;
                }
                Ok(Err(s)) => out.error = Some(s.message().to_string()),
                Err(_) => out.error = Some("attempt timed out".into()),
            }
            let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(opts.backoff_max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{CheckReport, NodeHash, ReplicaState};

    fn node(id: u64, hash: Option<u64>) -> NodeHash {
        NodeHash {
            endpoint: format!("127.0.0.1:{id}"),
            node_id: Some(id),
            ready: hash.is_some(),
            hash: hash.unwrap_or_default(),
            records: hash.map_or(0, |_| 10),
            applied_index: 7,
            error: hash.is_none().then(|| "no answer in time".into()),
        }
    }

    fn report(hashes: &[Option<u64>]) -> CheckReport {
        CheckReport {
            index: 7,
            nodes: (1..).zip(hashes).map(|(id, &h)| node(id, h)).collect(),
        }
    }

    fn ids(nodes: Vec<&NodeHash>) -> Vec<u64> {
        nodes.iter().filter_map(|n| n.node_id).collect()
    }

    #[test]
    fn two_of_three_agreeing_name_the_third_whichever_node_comes_first() {
        for (hashes, odd) in [
            ([Some(5), Some(5), Some(9)], 3),
            ([Some(9), Some(5), Some(5)], 1),
            ([Some(5), Some(9), Some(5)], 2),
        ] {
            let r = report(&hashes);
            assert!(!r.consistent());
            assert_eq!(r.majority(), Some((5, 10)), "{hashes:?}");
            assert_eq!(ids(r.differing()), [odd], "{hashes:?}");
            assert_eq!(r.agreeing().len(), 2);
            assert!(r.missing().is_empty());
            assert_eq!(r.state(odd as usize - 1), ReplicaState::Differs);
        }
        // Equal hashes over a different number of records differ too.
        let mut r = report(&[Some(5), Some(5), Some(5)]);
        assert!(r.consistent());
        r.nodes[1].records = 11;
        assert_eq!(ids(r.differing()), [2]);
    }

    #[test]
    fn all_different_or_too_few_answers_make_no_majority() {
        let r = report(&[Some(1), Some(2), Some(3)]);
        assert_eq!(r.majority(), None);
        assert!(r.differing().is_empty(), "no majority to differ from");
        assert!((0..3).all(|i| r.state(i) == ReplicaState::NoMajority));

        // One hash of three is no majority, even with no other hash to contradict it.
        let r = report(&[Some(1), None, None]);
        assert_eq!(r.majority(), None);
        assert_eq!(r.state(0), ReplicaState::NoMajority);
        assert_eq!(ids(r.missing()), [2, 3]);

        // Two of three agreeing are a majority while the third gave no hash.
        let r = report(&[None, Some(4), Some(4)]);
        assert_eq!(r.majority(), Some((4, 10)));
        assert!(r.differing().is_empty());
        assert_eq!(r.state(0), ReplicaState::NoHash);
        assert!(!r.consistent(), "a replica gave no hash");

        // Two replicas that differ: neither is a majority.
        assert_eq!(report(&[Some(1), Some(2)]).majority(), None);
        assert_eq!(CheckReport::default().majority(), None);
    }
}
