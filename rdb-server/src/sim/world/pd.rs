//! PD in the simulation (scenarios with `scheduling`): PD's own scheduler
//! ([`crate::schedule::Scheduler`]) on simulated time, fed every few ticks with the stores'
//! heartbeats and each region's report from its leader, as PD's service feeds it; the steps it
//! asks are carried out by the regions' leaders through the regions' own logs, as a store
//! carries out PD's operators. Faults add a store lost for good and a store decommissioned;
//! the spare stores start empty, as stores added to a running cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdb_proto::command::MemberRecord;
use rdb_storage::region::{self, Region};

use super::{World, STEPS_PER_TICK};
use crate::raft_core::MemberStep;
use crate::schedule::{
    self, Balance, Decision, MergeRules, Report, Rules, Scheduler, Step, StoreFacts,
};

/// Simulated time per step (a tick is 100 ms, as a store's default tick).
const MS_PER_STEP: u64 = 10;
/// Ticks between a region leader's reports (and the stores' heartbeats).
const REPORT_TICKS: u64 = 5;
/// Voters each region should have.
pub(super) const REPLICAS: usize = 3;
/// A store silent this long is not up (no new peer goes there).
const DOWN_AFTER: Duration = Duration::from_secs(1);
/// A store silent this long is gone: its peers are replaced. Shorter than the longest
/// crashes and pauses a run injects, so stores come back after their peers were replaced.
const GONE_AFTER: Duration = Duration::from_secs(5);

/// The rules PD schedules by in a run: PD's defaults, with times shortened to fit a run.
fn rules() -> Rules {
    Rules {
        replicas: REPLICAS,
        store_limit: 2,
        operator_timeout: Duration::from_secs(30),
        balance: Balance {
            leaders: true,
            regions: true,
        },
        // Every region is small: merges race splits and moves.
        merge: MergeRules {
            max_size: u64::MAX,
            max_keys: u64::MAX,
        },
        split_merge_interval: Duration::from_secs(10),
        settled_after: Duration::from_secs(5),
        balance_after: Duration::from_secs(2),
    }
}

/// PD as the simulation runs it: its scheduler, region map and what it heard of the stores.
pub(super) struct SimPd {
    sched: Scheduler,
    /// The instant simulated time 0 stands for (only differences are ever read, so a run
    /// replays alike whenever it runs).
    origin: Instant,
    /// PD's region map: each region as its leader last reported it.
    regions: BTreeMap<u64, Region>,
    /// The store that led each region at its last report.
    leaders: BTreeMap<u64, u64>,
    /// When each store was last heard (in steps).
    heard: BTreeMap<u64, u64>,
    /// Stores being removed or removed (`store remove`): their peers move away.
    pub(super) removed: BTreeSet<u64>,
    /// The planted bug: every store counts as heard.
    deaf: bool,
}

impl SimPd {
    /// PD, leading from step 0 (`deaf`: the planted bug that hears every store always).
    pub(super) fn new(deaf: bool) -> SimPd {
        let origin = Instant::now();
        SimPd {
            sched: Scheduler::new(origin),
            origin,
            regions: BTreeMap::new(),
            leaders: BTreeMap::new(),
            heard: BTreeMap::new(),
            removed: BTreeSet::new(),
            deaf,
        }
    }

    fn at(&self, step: u64) -> Instant {
        self.origin + Duration::from_millis(step * MS_PER_STEP)
    }

    /// Records a leader's report as PD's map does: a report at least as new as PD's record of
    /// the region replaces it, and drops regions whose range it overlaps at an older range
    /// version (split or merged away).
    fn record(&mut self, r: &Region, leader_store: u64) {
        let e = region::epoch(r);
        if let Some(old) = self.regions.get(&r.id) {
            let o = region::epoch(old);
            if o.version > e.version || o.conf_ver > e.conf_ver {
                return;
            }
        }
        let overlaps = |o: &Region| {
            (r.end_key.is_empty() || o.start_key < r.end_key)
                && (o.end_key.is_empty() || r.start_key < o.end_key)
        };
        self.regions
            .retain(|id, o| *id == r.id || !overlaps(o) || region::epoch(o).version >= e.version);
        self.regions.insert(r.id, r.clone());
        self.leaders.insert(r.id, leader_store);
        self.leaders.retain(|id, _| self.regions.contains_key(id));
    }

    /// The store views PD's checkers read.
    fn views(&self, now_step: u64, stores: u64) -> Vec<schedule::StoreView> {
        let facts = (1..=stores).map(|id| StoreFacts {
            id,
            labels: Vec::new(),
            removed: self.removed.contains(&id),
            silent: match self.deaf {
                true => Duration::ZERO,
                false => Duration::from_millis(
                    now_step.saturating_sub(self.heard.get(&id).copied().unwrap_or(0))
                        * MS_PER_STEP,
                ),
            },
        });
        schedule::store_views(
            facts,
            self.regions.values().map(|r| (r, 0)),
            self.leaders.values().copied(),
            DOWN_AFTER,
            GONE_AFTER,
        )
    }

    /// Running operators, for a failure's report.
    pub(super) fn describe(&self) -> String {
        self.sched
            .operators()
            .running()
            .map(|o| {
                let steps: Vec<String> = o.steps.iter().map(|s| s.to_string()).collect();
                format!(
                    "operator {} on region {} ({}): {} (done {})\n",
                    o.id,
                    o.region,
                    o.kind.as_str(),
                    steps.join(", "),
                    o.done
                )
            })
            .collect()
    }
}

impl World {
    /// PD's turn: every `REPORT_TICKS` ticks, the stores that run heartbeat, each region's
    /// leader reports it, and PD answers each report with the step it asks, if any.
    pub(super) fn pd_turn(&mut self) {
        if !self.now.is_multiple_of(REPORT_TICKS * STEPS_PER_TICK) {
            return;
        }
        let Some(mut pd) = self.pd.take() else {
            return;
        };
        for (i, n) in self.nodes.iter().enumerate() {
            if n.store.is_some() && n.paused_until <= self.now {
                pd.heard.insert(i as u64 + 1, self.now);
            }
        }
        let mut reports = Vec::new();
        for (id, meta) in self.regions() {
            let (Some(meta), Some(l)) = (meta, self.leader(id)) else {
                continue;
            };
            if self.nodes[l].paused_until > self.now {
                continue;
            }
            let Some(leader) = self.nodes[l]
                .store
                .as_ref()
                .and_then(|st| st.core(id))
                .map(|c| c.replica().id())
            else {
                continue;
            };
            pd.record(&meta, l as u64 + 1);
            reports.push((meta, l, leader));
        }
        let now = pd.at(self.now);
        let regions = pd.regions.clone();
        pd.sched.retire(|id| regions.contains_key(&id), now);
        let rules = rules();
        let stores = self.nodes.len() as u64;
        for (meta, l, leader) in reports {
            if !regions.contains_key(&meta.id) {
                continue;
            }
            let next = (!meta.end_key.is_empty())
                .then(|| regions.values().find(|r| r.start_key == meta.end_key))
                .flatten()
                .map(|r| (r, (0, 0)));
            let report = Report {
                region: &meta,
                leader,
                leader_store: l as u64 + 1,
                stats: (0, 0),
                next,
            };
            let views = pd.views(self.now, stores);
            let mut base = |_: bool| views.clone();
            let lookup = |id: u64| regions.get(&id);
            let heard = pd.sched.heartbeat(&report, &mut base, &lookup, &rules, now);
            let heard = match heard.decision {
                Decision::NeedsPeerId(plan) => {
                    let plan = plan.with_new_peer(self.draw_id());
                    pd.sched.start(&report, plan, &rules, now)
                }
                _ => heard,
            };
            for op in &heard.started {
                self.stats.operators += 1;
                let steps: Vec<String> = op.steps.iter().map(|s| s.to_string()).collect();
                self.trace(format!(
                    "PD: operator {} for region {} ({}): {}; {}",
                    op.id,
                    op.region,
                    op.kind.as_str(),
                    steps.join(", "),
                    op.reason
                ));
            }
            for f in &heard.ended {
                self.trace(format!(
                    "PD: operator {} for region {} {}",
                    f.op.id, f.op.region, f.outcome
                ));
            }
            if let Decision::Ask { step, first, .. } = heard.decision {
                self.pd_ask(l, meta.id, step, first);
            }
        }
        self.pd = Some(pd);
    }

    /// Region `id`'s leader on store index `l` carries out PD's step, as a store runs PD's
    /// operator: through the region's log, with the checks of a membership change (a
    /// promotion is refused until the learner caught up: PD asks again).
    fn pd_ask(&mut self, l: usize, id: u64, step: Step, first: bool) {
        let req = self.next_request;
        self.next_request += 1;
        let Some(st) = &mut self.nodes[l].store else {
            return;
        };
        let result = match step {
            Step::AddLearner { store, peer } => st
                .change_members(
                    id,
                    req,
                    &[MemberStep::AddLearner(peer)],
                    &[MemberRecord {
                        id: peer,
                        store_id: store,
                        ..Default::default()
                    }],
                )
                .map_err(|e| format!("{e:?}")),
            Step::Promote { peer } => st
                .change_members(id, req, &[MemberStep::Promote(peer)], &[])
                .map_err(|e| format!("{e:?}")),
            Step::Remove { peer } => st
                .change_members(id, req, &[MemberStep::Remove(peer)], &[])
                .map_err(|e| format!("{e:?}")),
            Step::TransferLeader { peer } => {
                st.transfer_leader(id, peer).map_err(|e| format!("{e:?}"))
            }
            Step::Merge { target } => st
                .prepare_merge(id, target, req)
                .map_err(|e| format!("{e:?}")),
        };
        if first || result.is_ok() {
            self.trace(format!(
                "region {id}: s{} runs PD's step {step} ({})",
                l + 1,
                match result {
                    Ok(()) => "proposed".to_string(),
                    Err(e) => format!("refused: {e}"),
                }
            ));
        }
    }

    /// Whether PD's work is done: every region has `REPLICAS` voters and no learner, all on
    /// stores that run and are not removed.
    pub(super) fn fully_replicated(&self) -> bool {
        let Some(pd) = &self.pd else {
            return true;
        };
        self.regions().values().all(|meta| {
            meta.as_ref().is_some_and(|m| {
                m.peers.len() == REPLICAS
                    && m.peers.iter().all(|p| {
                        !p.learner
                            && !pd.removed.contains(&p.store_id)
                            && !self.lost.contains(&(p.store_id as usize - 1))
                    })
            })
        })
    }
}
