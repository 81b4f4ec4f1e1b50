//! PD's scheduling (specs/015-scheduling), free of I/O and of the wall clock: checkers read a
//! region as its leader just reported it, and the stores as PD sees them, and propose an
//! operator (a short plan of membership and leadership steps); the [`Controller`] keeps the
//! operators that run, checks each step against the next heartbeat, and times out or cancels
//! those that stop making progress; the [`Scheduler`] puts them together for one heartbeat.
//! rdb-pd's service (`service/placement.rs`) feeds it and carries steps to leaders; it lives
//! beside the stores so that the seeded simulation (`crate::sim`) runs the same decisions.
//!
//! Checkers, in order of priority: the replica checker ([`replica_plan`], always on: repair,
//! drain, extra replicas), then leader balance and region balance ([`balance_plan`]), then
//! the merge checker ([`merge_plan`]).

mod balance;
#[cfg(test)]
mod fixtures;
mod merge;
mod operators;
mod replica;
mod scheduler;

pub use balance::{balance_plan, Balance};
pub use merge::{merge_plan, MergeRules};
pub use operators::{Controller, Finished, Operator, Outcome, Progress};
pub use replica::replica_plan;
pub use scheduler::{Decision, Heard, Report, Rules, Scheduler, Views};

use std::time::Duration;

use rdb_proto::pd::Region;

/// A new peer's id in a plan, before the service allocates one (see [`Plan::new_peer`]).
pub const NEW_PEER: u64 = 0;

/// What the scheduler needs to know of a store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreView {
    /// The store.
    pub id: u64,
    /// Tombstoned, being removed, or silent for longer than `max_store_down_secs`: its peers
    /// are replaced.
    pub gone: bool,
    /// Heard from lately and neither removed nor being removed: it may take a new peer.
    pub up: bool,
    /// Regions with a peer on it, counting the peers running operators add or remove.
    pub regions: usize,
    /// Regions it leads (by the latest heartbeats), counting running leader transfers.
    pub leaders: usize,
    /// Approximate bytes of the regions with a peer on it.
    pub size: u64,
    /// It may take one more new peer now: fewer than the store limit of snapshots are on their
    /// way to it.
    pub room: bool,
    /// It may send one more snapshot now (as the leader of a region that gets a new peer).
    pub can_send: bool,
    /// Its placement labels, most general first, as PD's `location_labels` order them
    /// (a store without one of them has an empty value there).
    pub labels: Vec<String>,
}

/// A store as PD's map and heartbeats know it, for [`store_views`].
#[derive(Debug, Clone, Default)]
pub struct StoreFacts {
    /// The store.
    pub id: u64,
    /// Its placement labels in `location_labels` order (empty where it has none).
    pub labels: Vec<String>,
    /// Tombstoned or being removed: its peers move away.
    pub removed: bool,
    /// How long since PD last heard from it (or since the PD leader's term began).
    pub silent: Duration,
}

/// Every store as the checkers see it: gone when removed or silent for longer than
/// `gone_after`, up when heard within `down_after`; the regions with a peer on it (each
/// with its approximate bytes) and the regions it leads (`leaders`: one store per region).
pub fn store_views<'a>(
    stores: impl IntoIterator<Item = StoreFacts>,
    regions: impl IntoIterator<Item = (&'a Region, u64)>,
    leaders: impl IntoIterator<Item = u64>,
    down_after: Duration,
    gone_after: Duration,
) -> Vec<StoreView> {
    let mut views: std::collections::BTreeMap<u64, StoreView> = stores
        .into_iter()
        .map(|f| {
            let view = StoreView {
                id: f.id,
                gone: f.removed || f.silent > gone_after,
                up: !f.removed && f.silent <= down_after,
                labels: f.labels,
                ..Default::default()
            };
            (f.id, view)
        })
        .collect();
    for (r, size) in regions {
        for p in &r.peers {
            if let Some(v) = views.get_mut(&p.store_id) {
                v.regions += 1;
                v.size = v.size.saturating_add(size);
            }
        }
    }
    for store in leaders {
        if let Some(v) = views.get_mut(&store) {
            v.leaders += 1;
        }
    }
    views.into_values().collect()
}

/// Why an operator was made (its checker), for logs, metrics and `operator list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The replica checker: repair, drain, extra or stray replicas.
    Replica,
    /// Leader balance: leadership toward stores that lead fewer regions.
    BalanceLeader,
    /// Region balance: a peer toward stores that hold fewer regions.
    BalanceRegion,
    /// The merge checker: a small region into its small right neighbour.
    Merge,
}

impl Kind {
    /// The name used in logs, metrics and `operator list`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Replica => "replica",
            Kind::BalanceLeader => "balance-leader",
            Kind::BalanceRegion => "balance-region",
            Kind::Merge => "merge",
        }
    }
}

/// One step of an operator, carried out by the region's leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Add a learner with this peer id on this store.
    AddLearner {
        /// The store to host it.
        store: u64,
        /// Its peer id ([`NEW_PEER`] in a plan, until the service allocates one).
        peer: u64,
    },
    /// Promote this learner (peer id) to voter; the leader waits for it to catch up.
    Promote {
        /// The learner.
        peer: u64,
    },
    /// Hand the region's leadership to this voter (a leader cannot remove itself).
    TransferLeader {
        /// The voter to lead next.
        peer: u64,
    },
    /// Remove this peer.
    Remove {
        /// The peer.
        peer: u64,
    },
    /// Merge the region into its right neighbour (specs/017-merge); done when the region is
    /// gone from PD's map.
    Merge {
        /// The region that takes this one's range.
        target: u64,
    },
}

impl Step {
    /// The store a step adds a peer to (it receives a snapshot), if it adds one.
    pub fn receiver(&self) -> Option<u64> {
        match self {
            Step::AddLearner { store, .. } => Some(*store),
            _ => None,
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::AddLearner { store, peer } => write!(f, "add learner {peer} on store {store}"),
            Step::Promote { peer } => write!(f, "promote {peer}"),
            Step::TransferLeader { peer } => write!(f, "transfer leader to {peer}"),
            Step::Remove { peer } => write!(f, "remove {peer}"),
            Step::Merge { target } => write!(f, "merge into region {target}"),
        }
    }
}

/// A checker's proposal: the steps that bring a region where it should be, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The checker.
    pub kind: Kind,
    /// In order; a [`NEW_PEER`] stands for the peer the plan adds.
    pub steps: Vec<Step>,
    /// Why, for people.
    pub reason: String,
}

impl Plan {
    /// Whether the plan adds a peer (the service allocates its id first).
    pub fn new_peer(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s, Step::AddLearner { peer: NEW_PEER, .. }))
    }

    /// The plan with [`NEW_PEER`] replaced by `id`.
    pub fn with_new_peer(mut self, id: u64) -> Plan {
        for s in &mut self.steps {
            match s {
                Step::AddLearner { peer, .. }
                | Step::Promote { peer }
                | Step::TransferLeader { peer }
                | Step::Remove { peer }
                    if *peer == NEW_PEER =>
                {
                    *peer = id
                }
                _ => {}
            }
        }
        self
    }

    /// The store the plan adds a peer to, if any.
    pub fn receiver(&self) -> Option<u64> {
        self.steps.iter().find_map(Step::receiver)
    }
}

/// How many of a store's labels, from the most general, `a` shares with `b` (0 when the
/// most general differs; all of them for two stores on the same host).
fn shared_labels(a: &StoreView, b: &StoreView) -> usize {
    a.labels
        .iter()
        .zip(&b.labels)
        .take_while(|(x, y)| !x.is_empty() && x == y)
        .count()
}

/// How close a store (as a home for one of `region`'s replicas) is to the region's other
/// peers: the most labels it shares with any of them, other than `except`'s. Lower is
/// better isolated; 0 for every store when no labels are set.
fn closeness(region: &Region, stores: &[StoreView], candidate: u64, except: u64) -> usize {
    let Some(c) = stores.iter().find(|s| s.id == candidate) else {
        return 0;
    };
    region
        .peers
        .iter()
        .filter(|p| p.store_id != candidate && p.store_id != except)
        .filter_map(|p| stores.iter().find(|s| s.id == p.store_id))
        .map(|s| shared_labels(c, s))
        .max()
        .unwrap_or(0)
}
