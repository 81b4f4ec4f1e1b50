//! The PD leader's scheduling as one state machine, free of I/O and of the wall clock: what a
//! region's heartbeat means (the next step of its operator, or a checker's new plan), given
//! the stores as PD sees them and the time the caller says it is. PD's service feeds it from
//! heartbeats and its region map; the seeded simulation feeds it from simulated stores on
//! simulated time, so both run the same decisions.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdb_proto::pd::Region;

use super::{
    balance_plan, merge_plan, replica_plan, Balance, Controller, Finished, Kind, MergeRules,
    Operator, Plan, Progress, Step, StoreView,
};

/// The settings scheduling decides by (PD's `[pd]` section, shorter in the simulation).
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Voters every region should have.
    pub replicas: usize,
    /// New-peer snapshots at once to one store, and from one store.
    pub store_limit: usize,
    /// An operator step without progress for this long times out.
    pub operator_timeout: Duration,
    /// Which balance is on (each also waits `balance_after` into a term).
    pub balance: Balance,
    /// Which regions are small enough to merge.
    pub merge: MergeRules,
    /// A region merges only if neither it nor its neighbour split or merged for this long.
    pub split_merge_interval: Duration,
    /// A region whose membership has not changed for this long has settled: extra peers are
    /// not an operator's (or a person's) work halfway, and the replica checker removes them.
    pub settled_after: Duration,
    /// Balance waits this long into a PD leader's term: until then it has not heard every
    /// region's leader and would move leaderships on a partial count.
    pub balance_after: Duration,
}

/// A region's heartbeat as the scheduler reads it, with what PD knows around the region.
#[derive(Debug, Clone, Copy)]
pub struct Report<'a> {
    /// The region as its leader reports it.
    pub region: &'a Region,
    /// The leader's peer id.
    pub leader: u64,
    /// The leader's store.
    pub leader_store: u64,
    /// Approximate bytes and keys of the region (leader's report).
    pub stats: (u64, u64),
    /// The region right of it in PD's map (its start key is this one's end key), with its
    /// last reported bytes and keys, for the merge checker.
    pub next: Option<(&'a Region, (u64, u64))>,
}

/// What the caller should do with a region's heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to ask.
    Nothing,
    /// Ask the leader for this step of operator `op` (`first`: asked for the first time).
    Ask {
        /// The operator's number.
        op: u64,
        /// The step.
        step: Step,
        /// Whether it is asked for the first time (logged once).
        first: bool,
    },
    /// A checker planned an operator that adds a peer: allocate the peer's id, then
    /// [`Scheduler::start`] the plan with it.
    NeedsPeerId(Plan),
}

/// What one call decided, and the operators that ended on the way (for logs and metrics).
#[derive(Debug, Clone)]
pub struct Heard {
    /// What to do.
    pub decision: Decision,
    /// Operators that ended during the call, oldest first.
    pub ended: Vec<Finished>,
    /// Operators started during the call, as they started (for logs and metrics).
    pub started: Vec<Operator>,
}

/// The PD leader's scheduling state: the running operators, and since when each region's
/// membership and range are as last reported. A new PD term starts a new one.
#[derive(Debug)]
pub struct Scheduler {
    ops: Controller,
    /// Each region's membership version as last reported, and since when.
    confs: HashMap<u64, (u64, Instant)>,
    /// Each region's range version (splits, merges) as last reported, and since when.
    versions: HashMap<u64, (u64, Instant)>,
    /// When the term began.
    began: Instant,
}

/// Store views for one decision: `views(fresh)` gives the stores as PD's map has them, before
/// the running operators' moves (`fresh`: an operator ended, so cached views are stale). The
/// scheduler projects the running operators onto them.
pub type Views<'a> = dyn FnMut(bool) -> Vec<StoreView> + 'a;

impl Scheduler {
    /// A scheduler for a term that began at `began`.
    pub fn new(began: Instant) -> Scheduler {
        Scheduler {
            ops: Controller::default(),
            confs: HashMap::new(),
            versions: HashMap::new(),
            began,
        }
    }

    /// The running and recently ended operators.
    pub fn operators(&self) -> &Controller {
        &self.ops
    }

    /// Store views with the running operators counted as done and each store's room against
    /// the store limit; `regions` finds a region in PD's map.
    pub fn project<'a>(
        &self,
        mut views: Vec<StoreView>,
        rules: &Rules,
        regions: impl Fn(u64) -> Option<&'a Region>,
    ) -> Vec<StoreView> {
        self.ops.project(&mut views, rules.store_limit, regions);
        views
    }

    /// Forgets regions PD's map no longer has (merged away): their operators end (finished
    /// when merging was their step) and their records go.
    pub fn retire(&mut self, exists: impl Fn(u64) -> bool, now: Instant) -> Vec<Finished> {
        let mark = self.ops.ended();
        self.ops.retire(&exists, now);
        self.confs.retain(|id, _| exists(*id));
        self.versions.retain(|id, _| exists(*id));
        self.ended_after(mark)
    }

    /// What `report`'s heartbeat means: the next step of the region's operator, or a new
    /// operator from the checkers (replica first, then balance, then merge). `regions` finds
    /// a region in PD's map (to project running operators onto the store views).
    pub fn heartbeat<'a>(
        &mut self,
        report: &Report<'_>,
        views: &mut Views<'_>,
        regions: &dyn Fn(u64) -> Option<&'a Region>,
        rules: &Rules,
        now: Instant,
    ) -> Heard {
        let region = report.region;
        let mark = self.ops.ended();
        let mut heard = Heard {
            decision: Decision::Nothing,
            ended: Vec::new(),
            started: Vec::new(),
        };
        let epoch = region.epoch.unwrap_or_default();
        let since = match self.confs.get(&region.id) {
            Some(&(v, since)) if v == epoch.conf_ver => since,
            _ => {
                self.confs.insert(region.id, (epoch.conf_ver, now));
                now
            }
        };
        if self
            .versions
            .get(&region.id)
            .is_none_or(|&(v, _)| v != epoch.version)
        {
            self.versions.insert(region.id, (epoch.version, now));
        }
        let settled = now.saturating_duration_since(since) >= rules.settled_after;
        // A running operator's step that needs a store that is not up is cancelled, or a move
        // toward a store lost meanwhile would hold the region (and its sender's snapshot
        // room) until its timeout, before the replica checker may remove the stranded learner.
        let mut fresh = false;
        let mut current = if self.ops.runs(region.id) {
            Some(self.project(views(false), rules, regions))
        } else {
            None
        };
        let down: Vec<u64> = current
            .iter()
            .flatten()
            .filter(|v| !v.up)
            .map(|v| v.id)
            .collect();
        let progress = self
            .ops
            .check(region, report.leader, rules.operator_timeout, now, |s| {
                down.contains(&s)
            });
        match progress {
            Progress::Ask(op, step, first) => {
                let views = match current.take() {
                    Some(v) => v,
                    None => self.project(views(false), rules, regions),
                };
                match self.doomed(report, &views, rules, settled) {
                    None => {
                        heard.decision = Decision::Ask { op, step, first };
                        heard.ended = self.ended_after(mark);
                        return heard;
                    }
                    Some(why) => self.ops.cancel(region.id, why, now),
                }
                // Its moves no longer count.
                current = None;
            }
            // Its moves are in PD's map now, no longer in the projection.
            Progress::Ended(_) => {
                fresh = true;
                current = None;
            }
            Progress::Idle => {}
        }
        heard.ended = self.ended_after(mark);
        if self.ops.merging_into(region.id) {
            // A region about to take a neighbour's range keeps its peers until then.
            return heard;
        }
        let views = match current {
            Some(v) => v,
            None => self.project(views(fresh), rules, regions),
        };
        let balance_ok = now.saturating_duration_since(self.began) >= rules.balance_after;
        let balance = Balance {
            leaders: rules.balance.leaders && balance_ok,
            regions: rules.balance.regions && balance_ok,
        };
        let plan = replica_plan(region, report.leader, &views, rules.replicas, settled)
            .or_else(|| {
                balance_plan(
                    region,
                    report.leader,
                    report.stats.0,
                    &views,
                    rules.replicas,
                    balance,
                )
            })
            .or_else(|| self.merge_plan(report, &views, rules, now));
        match plan {
            None => {}
            Some(plan) if plan.new_peer() => heard.decision = Decision::NeedsPeerId(plan),
            Some(plan) => {
                let more = self.start(report, plan, rules, now);
                heard.decision = more.decision;
                heard.ended.extend(more.ended);
                heard.started.extend(more.started);
            }
        }
        heard
    }

    /// Starts `plan` for `report`'s region (its new peer's id set, if it adds one) and asks
    /// its first step; refused (nothing) while the region has an operator or the store limit
    /// is reached.
    pub fn start(&mut self, report: &Report<'_>, plan: Plan, rules: &Rules, now: Instant) -> Heard {
        let region = report.region;
        let mark = self.ops.ended();
        let mut heard = Heard {
            decision: Decision::Nothing,
            ended: Vec::new(),
            started: Vec::new(),
        };
        let Some(_) = self.ops.start(
            region.id,
            plan,
            Some(report.leader_store),
            rules.store_limit,
            now,
        ) else {
            return heard;
        };
        heard.started.extend(self.ops.of(region.id).cloned());
        // The stores are as they were a moment ago: nothing in the first step needs a store
        // the checker did not just choose as up.
        if let Progress::Ask(op, step, first) =
            self.ops
                .check(region, report.leader, rules.operator_timeout, now, |_| {
                    false
                })
        {
            heard.decision = Decision::Ask { op, step, first };
        }
        heard.ended = self.ended_after(mark);
        heard
    }

    /// The merge checker's plan for the report's region and its right neighbour, if both are
    /// small by their leaders' last reports, neither changed its range within
    /// `split_merge_interval`, and the neighbour has no operator.
    fn merge_plan(
        &self,
        report: &Report<'_>,
        views: &[StoreView],
        rules: &Rules,
        now: Instant,
    ) -> Option<Plan> {
        let (next, theirs) = report.next?;
        if rules.merge.max_size == 0 || report.region.end_key.is_empty() {
            return None;
        }
        let settled = |id: u64| {
            self.versions.get(&id).is_some_and(|(_, since)| {
                now.saturating_duration_since(*since) >= rules.split_merge_interval
            })
        };
        if !settled(report.region.id) || !settled(next.id) || self.ops.runs(next.id) {
            return None;
        }
        merge_plan(
            report.region,
            report.stats,
            next,
            theirs,
            views,
            rules.replicas,
            rules.merge,
        )
    }

    /// Why the running balance operator of the report's region must stop, if it must: the
    /// replica checker has work for the region (a repair comes first).
    fn doomed(
        &self,
        report: &Report<'_>,
        views: &[StoreView],
        rules: &Rules,
        settled: bool,
    ) -> Option<String> {
        if self.ops.of(report.region.id).map(|o| o.kind) == Some(Kind::Replica) {
            return None;
        }
        let repair = replica_plan(report.region, report.leader, views, rules.replicas, settled)?;
        Some(format!("replaced by a repair: {}", repair.reason))
    }

    /// The operators that ended after `mark`, as the caller gets them.
    fn ended_after(&self, mark: u64) -> Vec<Finished> {
        self.ops.ended_after(mark).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{fixtures, store_views, StoreFacts, NEW_PEER};
    use rdb_proto::pd::RegionEpoch;

    fn rules() -> Rules {
        Rules {
            replicas: 3,
            store_limit: 2,
            operator_timeout: Duration::from_secs(60),
            balance: Balance {
                leaders: true,
                regions: true,
            },
            merge: MergeRules {
                max_size: 0,
                max_keys: 0,
            },
            split_merge_interval: Duration::from_secs(10),
            settled_after: Duration::from_secs(20),
            balance_after: Duration::from_secs(5),
        }
    }

    /// Region 7 at membership `conf_ver` with `peers` as (peer id, store, learner).
    fn region(conf_ver: u64, peers: &[(u64, u64, bool)]) -> Region {
        Region {
            epoch: Some(RegionEpoch {
                version: 1,
                conf_ver,
            }),
            ..fixtures::region(7, peers)
        }
    }

    /// Stores 1..=4 as PD's map has them, with `r` and two more regions on the stores of
    /// `r`'s first three peers, `silent` seconds for each.
    fn views(r: &Region, silent: [u64; 4]) -> Vec<StoreView> {
        let facts = (1..=4).map(|id| StoreFacts {
            id,
            silent: Duration::from_secs(silent[id as usize - 1]),
            ..Default::default()
        });
        let mut others = [r.clone(), r.clone()];
        for (i, o) in others.iter_mut().enumerate() {
            o.id = 100 + i as u64;
            o.peers.truncate(3);
        }
        store_views(
            facts,
            std::iter::once((r, 0)).chain(others.iter().map(|o| (o, 0))),
            [1, 2, 3],
            Duration::from_secs(3),
            Duration::from_secs(10),
        )
    }

    /// One heartbeat of `r`, led by peer 1 on store 1.
    fn beat(s: &mut Scheduler, r: &Region, silent: [u64; 4], now: Instant) -> Heard {
        let report = Report {
            region: r,
            leader: 1,
            leader_store: 1,
            stats: (0, 0),
            next: None,
        };
        let base = views(r, silent);
        let mut v = |_: bool| base.clone();
        let lookup = |id: u64| (id == r.id).then_some(r);
        s.heartbeat(&report, &mut v, &lookup, &rules(), now)
    }

    fn start(s: &mut Scheduler, r: &Region, plan: Plan, now: Instant) -> Heard {
        let report = Report {
            region: r,
            leader: 1,
            leader_store: 1,
            stats: (0, 0),
            next: None,
        };
        s.start(&report, plan, &rules(), now)
    }

    #[test]
    fn a_lost_store_is_repaired_step_by_step_with_a_peer_id_asked_of_the_caller() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(t0);
        let lost = [0, 0, 30, 0];
        let r = region(1, &[(1, 1, false), (2, 2, false), (3, 3, false)]);
        let heard = beat(&mut s, &r, lost, t0);
        let Decision::NeedsPeerId(plan) = heard.decision else {
            panic!("no repair: {heard:?}");
        };
        assert!(plan.new_peer() && plan.kind == Kind::Replica);
        let heard = start(&mut s, &r, plan.with_new_peer(10), t0);
        assert_eq!(heard.started.len(), 1);
        let add = Step::AddLearner { store: 4, peer: 10 };
        assert_eq!(
            heard.decision,
            Decision::Ask {
                op: 1,
                step: add,
                first: true
            }
        );
        // Asked again until it shows done, then the next step.
        let heard = beat(&mut s, &r, lost, t0);
        assert!(matches!(heard.decision, Decision::Ask { first: false, .. }));
        let r = region(
            2,
            &[(1, 1, false), (2, 2, false), (3, 3, false), (10, 4, true)],
        );
        let promote = Step::Promote { peer: 10 };
        let heard = beat(&mut s, &r, lost, t0);
        assert!(matches!(heard.decision, Decision::Ask { step, .. } if step == promote));
        let r = region(
            3,
            &[(1, 1, false), (2, 2, false), (3, 3, false), (10, 4, false)],
        );
        let remove = Step::Remove { peer: 3 };
        let heard = beat(&mut s, &r, lost, t0);
        assert!(matches!(heard.decision, Decision::Ask { step, .. } if step == remove));
        let r = region(4, &[(1, 1, false), (2, 2, false), (10, 4, false)]);
        let heard = beat(&mut s, &r, lost, t0);
        assert_eq!(heard.ended.len(), 1, "{heard:?}");
        assert_eq!(heard.ended[0].outcome, super::super::Outcome::Finished);
        assert_eq!(heard.decision, Decision::Nothing);
        assert!(!s.operators().runs(7));
    }

    #[test]
    fn balance_waits_into_the_term_and_a_repair_replaces_a_running_move() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(t0);
        let r = region(1, &[(1, 1, false), (2, 2, false), (3, 3, false)]);
        // Store 4 is empty, but the term is young: no move yet.
        let heard = beat(&mut s, &r, [0; 4], t0 + Duration::from_secs(1));
        assert_eq!(heard.decision, Decision::Nothing);
        let later = t0 + Duration::from_secs(6);
        let Decision::NeedsPeerId(plan) = beat(&mut s, &r, [0; 4], later).decision else {
            panic!("no balance once the term is 6 s old");
        };
        assert_eq!(plan.kind, Kind::BalanceRegion);
        assert!(plan.steps.contains(&Step::AddLearner {
            store: 4,
            peer: NEW_PEER
        }));
        start(&mut s, &r, plan.with_new_peer(10), later);
        assert!(s.operators().runs(7));
        // Store 2 is lost meanwhile: the move is cancelled for the repair.
        let heard = beat(&mut s, &r, [0, 30, 0, 0], later);
        assert_eq!(heard.ended.len(), 1, "{heard:?}");
        assert!(heard.ended[0]
            .outcome
            .to_string()
            .contains("replaced by a repair"));
        let Decision::NeedsPeerId(plan) = heard.decision else {
            panic!("no repair after the cancel: {heard:?}");
        };
        assert_eq!(plan.kind, Kind::Replica);
    }

    #[test]
    fn retired_regions_end_their_operators_and_are_forgotten() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(t0);
        let r = region(1, &[(1, 1, false), (2, 2, false), (3, 3, false)]);
        let Decision::NeedsPeerId(plan) = beat(&mut s, &r, [0, 0, 30, 0], t0).decision else {
            panic!("no repair");
        };
        start(&mut s, &r, plan.with_new_peer(10), t0);
        assert!(s.confs.contains_key(&7) && s.versions.contains_key(&7));
        let ended = s.retire(|_| false, t0);
        assert_eq!(ended.len(), 1);
        assert!(!s.operators().runs(7));
        assert!(s.confs.is_empty() && s.versions.is_empty());
    }
}
