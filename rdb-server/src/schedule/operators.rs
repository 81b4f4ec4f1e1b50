//! The operators that run: at most one per region, each a plan whose steps are checked off as
//! the region's heartbeats show them done. An operator whose current step shows no progress
//! for its timeout is dropped (timed out), one whose step became impossible (its peer gone,
//! its store not up, a peer to remove leading) is cancelled; what they left behind is the
//! replica checker's to tidy. Kept in the PD leader's memory: a new leader starts with none, and its checkers pick
//! up from the regions as they are.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use rdb_proto::pd::Region;

use super::{Kind, Plan, Step, StoreView};

/// How many ended operators `operator list` shows.
const RECENT: usize = 64;

/// A leader transfer that has not happened in this long will not (raft-rs gives up after an
/// election timeout): the operator is dropped.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);

/// An operator that runs: a plan for one region, and how far it got.
#[derive(Debug, Clone)]
pub struct Operator {
    /// Its number, unique in this PD leader's term.
    pub id: u64,
    /// The region.
    pub region: u64,
    /// Why it was made.
    pub kind: Kind,
    /// The steps, all with peer ids.
    pub steps: Vec<Step>,
    /// How many steps the region shows done.
    pub done: usize,
    /// Why, for people.
    pub reason: String,
    /// When it was made.
    pub created: Instant,
    /// When its last step was done (or it was made).
    pub progressed: Instant,
    /// The store that led the region when it was made: a new peer's snapshot comes from it.
    pub sender: Option<u64>,
}

impl Operator {
    /// The store its new peer's snapshot goes to while it is on its way: from the operator's
    /// start until that peer is promoted (the learner catches up in between, so the snapshot
    /// is in flight long after the learner was added).
    fn receiving(&self) -> Option<u64> {
        let rest = &self.steps[self.done..];
        self.steps.iter().find_map(|s| match *s {
            Step::AddLearner { store, peer } => rest
                .iter()
                .any(|r| *r == Step::AddLearner { store, peer } || *r == Step::Promote { peer })
                .then_some(store),
            _ => None,
        })
    }
}

/// How an operator ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every step done.
    Finished,
    /// No progress within its timeout.
    TimedOut,
    /// A step became impossible (why).
    Cancelled(String),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Finished => write!(f, "finished"),
            Outcome::TimedOut => write!(f, "timed out"),
            Outcome::Cancelled(why) => write!(f, "cancelled: {why}"),
        }
    }
}

/// An operator that ended, kept for `operator list`.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The operator as it was when it ended.
    pub op: Operator,
    /// How it ended.
    pub outcome: Outcome,
    /// When.
    pub at: Instant,
}

/// What a region's heartbeat means for its operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// No operator runs for the region.
    Idle,
    /// Ask the leader for this step (the operator's number, and whether the step is asked for
    /// the first time).
    Ask(u64, Step, bool),
    /// The operator ended with this heartbeat.
    Ended(Outcome),
}

/// The running operators and the latest that ended.
#[derive(Debug, Default)]
pub struct Controller {
    running: BTreeMap<u64, Operator>,
    /// For each running operator, the step index last asked (a step is logged once).
    asked: HashMap<u64, usize>,
    recent: VecDeque<Finished>,
    /// Operators ended so far (see [`Controller::ended_after`]).
    ended: u64,
    next_id: u64,
}

/// Whether `step` is done in `region` led by `leader`: Ok(true) done, Ok(false) not yet,
/// Err(why) never (the operator is cancelled). A step not done that needs a store `gone`
/// says is not up (a new peer there, promoted, or leading) never will be: a learner on a
/// dead store never catches up.
fn status(
    step: &Step,
    region: &Region,
    leader: u64,
    gone: impl Fn(u64) -> bool,
) -> Result<bool, String> {
    let peer = |id: u64| region.peers.iter().find(|p| p.id == id);
    let needs = match *step {
        Step::AddLearner { store, .. } => Some(store),
        Step::Promote { peer: id } | Step::TransferLeader { peer: id } => {
            peer(id).map(|p| p.store_id)
        }
        Step::Remove { .. } | Step::Merge { .. } => None,
    };
    let done = match *step {
        Step::AddLearner { store, peer: id } => match peer(id) {
            Some(_) => Ok(true),
            None if region.peers.iter().any(|p| p.store_id == store) => {
                Err(format!("store {store} got another peer of the region"))
            }
            None => Ok(false),
        },
        Step::Promote { peer: id } => match peer(id) {
            Some(p) => Ok(!p.learner),
            None => Err(format!("peer {id} is gone")),
        },
        Step::TransferLeader { peer: id } => match peer(id) {
            _ if leader == id => Ok(true),
            Some(p) if !p.learner => Ok(false),
            _ => Err(format!("peer {id} cannot lead")),
        },
        Step::Remove { peer: id } => match peer(id) {
            None => Ok(true),
            Some(_) if id == leader => Err(format!("peer {id} leads")),
            Some(_) => Ok(false),
        },
        // Done once the region is gone from PD's map (see `Controller::retire`).
        Step::Merge { .. } => Ok(false),
    }?;
    match needs {
        Some(store) if !done && gone(store) => Err(format!("store {store} is not up")),
        _ => Ok(done),
    }
}

impl Controller {
    /// Checks the operator of `region` (led by peer `leader`) against what the region shows:
    /// steps done are checked off, and the next is asked for, unless the operator ended
    /// (cancelled when its next step needs a store that `gone` says is not up).
    pub fn check(
        &mut self,
        region: &Region,
        leader: u64,
        timeout: Duration,
        now: Instant,
        gone: impl Fn(u64) -> bool,
    ) -> Progress {
        let Some(op) = self.running.get_mut(&region.id) else {
            return Progress::Idle;
        };
        let outcome = loop {
            let Some(step) = op.steps.get(op.done) else {
                break Outcome::Finished;
            };
            match status(step, region, leader, &gone) {
                Ok(true) => {
                    op.done += 1;
                    op.progressed = now;
                }
                Ok(false) => {
                    let limit = match step {
                        Step::TransferLeader { .. } => TRANSFER_TIMEOUT.min(timeout),
                        _ => timeout,
                    };
                    if now.saturating_duration_since(op.progressed) > limit {
                        break Outcome::TimedOut;
                    }
                    let first = self.asked.insert(op.id, op.done) != Some(op.done);
                    return Progress::Ask(op.id, step.clone(), first);
                }
                Err(why) => break Outcome::Cancelled(why),
            }
        };
        self.end(region.id, outcome.clone(), now);
        Progress::Ended(outcome)
    }

    fn end(&mut self, region: u64, outcome: Outcome, now: Instant) {
        if let Some(op) = self.running.remove(&region) {
            self.asked.remove(&op.id);
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(Finished {
                op,
                outcome,
                at: now,
            });
            self.ended += 1;
        }
    }

    /// How many operators have ended so far: a mark for [`Controller::ended_after`].
    pub fn ended(&self) -> u64 {
        self.ended
    }

    /// The operators that ended after `mark` (an earlier [`Controller::ended`]), oldest
    /// first, as far as the recent list keeps them.
    pub fn ended_after(&self, mark: u64) -> impl Iterator<Item = &Finished> {
        let n = usize::try_from(self.ended.saturating_sub(mark)).unwrap_or(usize::MAX);
        self.recent.iter().skip(self.recent.len().saturating_sub(n))
    }

    /// Starts `plan` (with its new peer's id set) for `region`, its snapshot sent from
    /// `sender`; returns the operator's number. Refused (None) while the region has an
    /// operator, or when its new peer would pass `limit` snapshots on their way to its store
    /// or from `sender` (checked here, where operators start one at a time: heartbeats that
    /// planned at once cannot all take the last room).
    pub fn start(
        &mut self,
        region: u64,
        plan: Plan,
        sender: Option<u64>,
        limit: usize,
        now: Instant,
    ) -> Option<u64> {
        if self.running.contains_key(&region) || plan.steps.is_empty() {
            return None;
        }
        if let Some(to) = plan.receiver() {
            let receiving = self
                .running
                .values()
                .filter(|o| o.receiving() == Some(to))
                .count();
            let sending = self
                .running
                .values()
                .filter(|o| sender.is_some() && o.sender == sender && o.receiving().is_some())
                .count();
            if receiving >= limit || sending >= limit {
                return None;
            }
        }
        self.next_id += 1;
        let id = self.next_id;
        self.running.insert(
            region,
            Operator {
                id,
                region,
                kind: plan.kind,
                steps: plan.steps,
                done: 0,
                reason: plan.reason,
                created: now,
                progressed: now,
                sender,
            },
        );
        Some(id)
    }

    /// Cancels a region's operator (it cannot finish, or a more urgent one replaces it).
    pub fn cancel(&mut self, region: u64, why: String, now: Instant) {
        self.end(region, Outcome::Cancelled(why), now);
    }

    /// Ends the operators of regions PD's map no longer has: finished when merging was their
    /// step (the target's report dropped the region), cancelled otherwise.
    pub fn retire(&mut self, exists: impl Fn(u64) -> bool, now: Instant) {
        let gone: Vec<(u64, bool)> = self
            .running
            .values()
            .filter(|o| !exists(o.region))
            .map(|o| {
                let merging = matches!(o.steps.get(o.done), Some(Step::Merge { .. }));
                (o.region, merging)
            })
            .collect();
        for (region, merging) in gone {
            let outcome = if merging {
                if let Some(op) = self.running.get_mut(&region) {
                    op.done = op.steps.len();
                }
                Outcome::Finished
            } else {
                Outcome::Cancelled("the region is gone".into())
            };
            self.end(region, outcome, now);
        }
    }

    /// Whether a running operator merges some region into `target`: `target` must not change
    /// meanwhile.
    pub fn merging_into(&self, target: u64) -> bool {
        self.running
            .values()
            .any(|o| o.steps[o.done..].contains(&Step::Merge { target }))
    }

    /// The operator that runs for `region`, if any.
    pub fn of(&self, region: u64) -> Option<&Operator> {
        self.running.get(&region)
    }

    /// Whether an operator runs for `region`.
    pub fn runs(&self, region: u64) -> bool {
        self.running.contains_key(&region)
    }

    /// The running operators, by region.
    pub fn running(&self) -> impl Iterator<Item = &Operator> {
        self.running.values()
    }

    /// The operators that ended lately, oldest first.
    pub fn recent(&self) -> impl Iterator<Item = &Finished> {
        self.recent.iter()
    }

    /// Store views as they will be once the running operators are done (their new peers
    /// counted, their removed peers and moved leaderships not), with each store's snapshot
    /// room against `limit`; `regions` finds a running operator's region in PD's map.
    pub fn project<'a>(
        &self,
        stores: &mut [StoreView],
        limit: usize,
        regions: impl Fn(u64) -> Option<&'a Region>,
    ) {
        // Per store: (regions, leaders, receiving, sending) changes.
        let mut delta: HashMap<u64, (isize, isize, usize, usize)> = HashMap::new();
        for op in self.running.values() {
            let rest = &op.steps[op.done..];
            for step in rest {
                if let Some(store) = step.receiver() {
                    delta.entry(store).or_default().0 += 1;
                }
            }
            if let Some(store) = op.receiving() {
                delta.entry(store).or_default().2 += 1;
                if let Some(from) = op.sender {
                    delta.entry(from).or_default().3 += 1;
                }
            }
            let Some(region) = regions(op.region) else {
                continue;
            };
            let store_of = |peer: u64| {
                region
                    .peers
                    .iter()
                    .find(|p| p.id == peer)
                    .map(|p| p.store_id)
            };
            for step in rest {
                match *step {
                    Step::Remove { peer } => {
                        if let Some(store) = store_of(peer) {
                            delta.entry(store).or_default().0 -= 1;
                        }
                    }
                    Step::TransferLeader { peer } => {
                        if let Some(store) = store_of(peer) {
                            delta.entry(store).or_default().1 += 1;
                        }
                        if let Some(store) = op.sender {
                            delta.entry(store).or_default().1 -= 1;
                        }
                    }
                    Step::AddLearner { .. } | Step::Promote { .. } | Step::Merge { .. } => {}
                }
            }
        }
        for s in stores.iter_mut() {
            let (regions, leaders, receiving, sending) =
                delta.get(&s.id).copied().unwrap_or_default();
            s.regions = s.regions.saturating_add_signed(regions);
            s.leaders = s.leaders.saturating_add_signed(leaders);
            s.room = receiving < limit;
            s.can_send = sending < limit;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{self, store};
    use super::super::NEW_PEER;
    use super::*;

    /// Region 7 with `peers` as (peer id, store, learner).
    fn region(peers: &[(u64, u64, bool)]) -> Region {
        fixtures::region(7, peers)
    }

    fn moving() -> Plan {
        Plan {
            kind: Kind::BalanceRegion,
            steps: vec![
                Step::AddLearner {
                    store: 4,
                    peer: NEW_PEER,
                },
                Step::Promote { peer: NEW_PEER },
                Step::Remove { peer: 12 },
            ],
            reason: "test".into(),
        }
        .with_new_peer(14)
    }

    const T: Duration = Duration::from_secs(60);

    #[test]
    fn steps_are_checked_off_as_the_region_shows_them_done() {
        let mut c = Controller::default();
        let t0 = Instant::now();
        assert_eq!(c.start(7, moving(), Some(1), 4, t0), Some(1));
        assert_eq!(c.start(7, moving(), Some(1), 4, t0), None, "one per region");
        let r = region(&[(11, 1, false), (12, 2, false), (13, 3, false)]);
        let add = Step::AddLearner { store: 4, peer: 14 };
        assert_eq!(
            c.check(&r, 11, T, t0, |_| false),
            Progress::Ask(1, add.clone(), true)
        );
        assert_eq!(
            c.check(&r, 11, T, t0, |_| false),
            Progress::Ask(1, add, false)
        );
        let r = region(&[
            (11, 1, false),
            (12, 2, false),
            (13, 3, false),
            (14, 4, true),
        ]);
        assert_eq!(
            c.check(&r, 11, T, t0, |_| false),
            Progress::Ask(1, Step::Promote { peer: 14 }, true)
        );
        // Two steps done between heartbeats.
        let r = region(&[(11, 1, false), (13, 3, false), (14, 4, false)]);
        assert_eq!(
            c.check(&r, 11, T, t0, |_| false),
            Progress::Ended(Outcome::Finished)
        );
        assert_eq!(c.check(&r, 11, T, t0, |_| false), Progress::Idle);
        assert_eq!(c.recent().count(), 1);
    }

    #[test]
    fn an_operator_without_progress_times_out_and_an_impossible_one_is_cancelled() {
        let mut c = Controller::default();
        let t0 = Instant::now();
        c.start(7, moving(), Some(1), 4, t0);
        let r = region(&[
            (11, 1, false),
            (12, 2, false),
            (13, 3, false),
            (14, 4, true),
        ]);
        assert!(matches!(
            c.check(&r, 11, T, t0, |_| false),
            Progress::Ask(..)
        ));
        // The learner never catches up.
        let later = t0 + T + Duration::from_secs(1);
        assert_eq!(
            c.check(&r, 11, T, later, |_| false),
            Progress::Ended(Outcome::TimedOut)
        );
        // The learner was removed by someone else: the promotion cannot happen.
        c.start(7, moving(), Some(1), 4, t0);
        let r = region(&[
            (11, 1, false),
            (12, 2, false),
            (13, 3, false),
            (14, 4, true),
        ]);
        c.check(&r, 11, T, t0, |_| false);
        let r = region(&[(11, 1, false), (12, 2, false), (13, 3, false)]);
        assert!(matches!(
            c.check(&r, 11, T, t0, |_| false),
            Progress::Ended(Outcome::Cancelled(_))
        ));
        // A peer to remove that leads now: cancelled (the checkers plan again).
        c.start(7, moving(), Some(1), 4, t0);
        let r = region(&[
            (11, 1, false),
            (12, 2, false),
            (13, 3, false),
            (14, 4, false),
        ]);
        assert!(matches!(
            c.check(&r, 12, T, t0, |_| false),
            Progress::Ended(Outcome::Cancelled(_))
        ));
    }

    #[test]
    fn an_operator_that_would_pass_a_store_limit_does_not_start() {
        let mut c = Controller::default();
        let t0 = Instant::now();
        // Two moves to store 4 from store 1's leaders: the third waits.
        assert!(c.start(7, moving(), Some(1), 2, t0).is_some());
        assert!(c.start(8, moving(), Some(1), 2, t0).is_some());
        assert_eq!(
            c.start(9, moving(), Some(2), 2, t0),
            None,
            "store 4 receives 2"
        );
        let elsewhere = Plan {
            steps: vec![Step::AddLearner { store: 5, peer: 15 }],
            ..moving()
        };
        assert_eq!(
            c.start(9, elsewhere.clone(), Some(1), 2, t0),
            None,
            "store 1 sends 2"
        );
        assert!(c.start(9, elsewhere, Some(2), 2, t0).is_some());
        // Steps without a new peer are never limited.
        let transfer = Plan {
            kind: Kind::BalanceLeader,
            steps: vec![Step::TransferLeader { peer: 11 }],
            reason: "test".into(),
        };
        assert!(c.start(10, transfer, Some(1), 2, t0).is_some());
    }

    #[test]
    fn a_new_peer_holds_its_store_s_room_until_it_is_promoted() {
        let mut c = Controller::default();
        let t0 = Instant::now();
        assert!(c.start(7, moving(), Some(1), 1, t0).is_some());
        // The learner is added at once; its snapshot is on its way until it is promoted.
        let r = region(&[
            (11, 1, false),
            (12, 2, false),
            (13, 3, false),
            (14, 4, true),
        ]);
        assert!(matches!(
            c.check(&r, 11, T, t0, |_| false),
            Progress::Ask(_, Step::Promote { peer: 14 }, true)
        ));
        assert_eq!(
            c.start(8, moving(), Some(2), 1, t0),
            None,
            "store 4 receives"
        );
        let r = region(&[
            (11, 1, false),
            (12, 2, false),
            (13, 3, false),
            (14, 4, false),
        ]);
        c.check(&r, 11, T, t0, |_| false);
        assert!(
            c.start(8, moving(), Some(2), 1, t0).is_some(),
            "promoted: room again"
        );
    }

    #[test]
    fn an_operator_whose_new_peer_is_on_a_gone_store_is_cancelled() {
        let mut c = Controller::default();
        let t0 = Instant::now();
        let four_gone = |s: u64| s == 4;
        // Its learner is there: it will never catch up to be promoted.
        c.start(7, moving(), Some(1), 4, t0);
        let r = region(&[
            (11, 1, false),
            (12, 2, false),
            (13, 3, false),
            (14, 4, true),
        ]);
        assert_eq!(
            c.check(&r, 11, T, t0, four_gone),
            Progress::Ended(Outcome::Cancelled("store 4 is not up".into()))
        );
        // Its learner is not added yet: it is not asked for.
        c.start(7, moving(), Some(1), 4, t0);
        let r = region(&[(11, 1, false), (12, 2, false), (13, 3, false)]);
        assert!(matches!(
            c.check(&r, 11, T, t0, four_gone),
            Progress::Ended(Outcome::Cancelled(_))
        ));
        // A peer to remove on a gone store is still removed.
        c.start(7, moving(), Some(1), 4, t0);
        let r = region(&[
            (11, 1, false),
            (12, 2, false),
            (13, 3, false),
            (14, 4, false),
        ]);
        assert_eq!(
            c.check(&r, 11, T, t0, |s| s == 2),
            Progress::Ask(
                c.running().next().map_or(0, |o| o.id),
                Step::Remove { peer: 12 },
                true
            )
        );
    }

    #[test]
    fn a_merge_finishes_when_its_region_leaves_the_map() {
        let mut c = Controller::default();
        let t0 = Instant::now();
        let merge = Plan {
            kind: Kind::Merge,
            steps: vec![Step::Merge { target: 8 }],
            reason: "test".into(),
        };
        c.start(7, merge, Some(1), 4, t0);
        c.start(9, moving(), Some(1), 4, t0);
        assert!(c.merging_into(8) && !c.merging_into(7));
        let r = region(&[(11, 1, false), (12, 2, false), (13, 3, false)]);
        assert!(matches!(
            c.check(&r, 11, T, t0, |_| false),
            Progress::Ask(_, Step::Merge { target: 8 }, true)
        ));
        // Region 7 merged away, region 9 vanished some other way.
        c.retire(|id| id == 8, t0);
        let ended: Vec<(u64, Outcome)> = c
            .recent()
            .map(|f| (f.op.region, f.outcome.clone()))
            .collect();
        assert_eq!(
            ended,
            vec![
                (7, Outcome::Finished),
                (9, Outcome::Cancelled("the region is gone".into()))
            ]
        );
        assert!(!c.merging_into(8));
    }

    #[test]
    fn running_operators_count_toward_store_load_and_limits() {
        let mut c = Controller::default();
        let t0 = Instant::now();
        c.start(7, moving(), Some(1), 4, t0);
        let r = region(&[(11, 1, false), (12, 2, false), (13, 3, false)]);
        let mut stores: Vec<StoreView> = (1..=4)
            .map(|id| StoreView {
                regions: 5,
                ..store(id)
            })
            .collect();
        c.project(&mut stores, 1, |id| (id == 7).then_some(&r));
        let load: Vec<(usize, bool, bool)> = stores
            .iter()
            .map(|s| (s.regions, s.room, s.can_send))
            .collect();
        assert_eq!(
            load,
            vec![
                (5, true, false),
                (4, true, true),
                (5, true, true),
                (6, false, true)
            ]
        );
    }
}
