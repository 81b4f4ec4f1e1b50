//! Where the service meets the scheduler (see [`crate::schedule`]): the store views the
//! checkers read, the operator step for a region's heartbeat answer (a new peer's id from the
//! allocator), the operators for `operator list`, and the tombstone of a store whose removal
//! drained it.

use super::*;
use crate::schedule::{self, Decision, Heard, Report, StoreFacts, StoreView};

/// A region with its last reported bytes and keys.
type WithStats = (Region, (u64, u64));

/// Store views older than this are computed again (they are O(regions) to compute).
const VIEWS_FRESH_FOR: Duration = Duration::from_secs(1);

impl PdService {
    /// Every store as the checkers see it, from PD's region map and the leader's heartbeat
    /// records (see [`schedule::store_views`]), before the running operators' moves.
    fn compute_views(&self, b: &Heartbeats) -> Vec<StoreView> {
        let labels = &self.settings.location_labels;
        let now = Instant::now();
        self.read(|s| {
            let facts = s.stores.values().map(|st| {
                let label = |key: &String| {
                    st.labels
                        .iter()
                        .find(|l| &l.key == key)
                        .map(|l| l.value.clone())
                        .unwrap_or_default()
                };
                StoreFacts {
                    id: st.id,
                    labels: labels.iter().map(label).collect(),
                    // A store being removed is gone for placement: its peers move away.
                    removed: st.state == StoreState::Tombstone as i32
                        || st.state == StoreState::Offline as i32,
                    silent: b
                        .stores
                        .get(&st.id)
                        .copied()
                        .or(b.since)
                        .map_or(Duration::ZERO, |t| now.saturating_duration_since(t)),
                }
            });
            let regions = s.regions.values().map(|r| {
                let size = b.regions.get(&r.id).map_or(0, |(_, size, _)| *size);
                (r, size)
            });
            let leaders = b
                .regions
                .values()
                .filter_map(|(leader, _, _)| leader.as_ref().map(|l| l.store_id));
            schedule::store_views(
                facts,
                regions,
                leaders,
                self.store_down_after,
                self.max_store_down,
            )
        })
    }

    /// The store views before the running operators' moves, cached for a second (`fresh`:
    /// computed again now).
    fn base_views(&self, b: &mut Heartbeats, fresh: bool) -> Vec<StoreView> {
        let cached = b
            .views
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < VIEWS_FRESH_FOR);
        if fresh || !cached {
            let views = self.compute_views(b);
            b.views = Some((Instant::now(), views));
        }
        b.views.as_ref().map(|(_, v)| v.clone()).unwrap_or_default()
    }

    /// Tombstones every store being removed (Offline) that PD's region map names no replica
    /// on any more: its drain is over. A failure is retried at the next heartbeat.
    pub(super) async fn tombstone_drained(&self) {
        let drained: Vec<u64> = self.read(|s| {
            s.stores
                .values()
                .filter(|st| st.state == StoreState::Offline as i32)
                .filter(|st| s.replicas_on(st.id).is_none())
                .map(|st| st.id)
                .collect()
        });
        for id in drained {
            let op = Op::SetStoreState(SetStoreStateRequest {
                store_id: id,
                state: StoreState::Tombstone as i32,
            });
            if let Ok((None, _)) = self.change(op).await {
                slog::info!(self.logger, "store drained and tombstoned"; "store" => id);
            }
        }
    }

    /// Ends the operators of regions PD's map no longer has (merged away) and forgets what
    /// the scheduler and the heartbeat records kept of them.
    pub(super) fn retire_regions(&self) {
        let now = Instant::now();
        let mut b = lock(&self.beats);
        let ended = self.read(|s| {
            b.regions.retain(|id, _| s.regions.contains_key(id));
            b.sched.retire(|id| s.regions.contains_key(&id), now)
        });
        drop(b);
        self.log_heard(&Heard {
            decision: Decision::Nothing,
            ended,
            started: Vec::new(),
        });
    }

    /// The step to ask of `region`'s leader in the answer to its heartbeat: the next step of
    /// its running operator, or the first of a new one if a checker has a plan. A new peer's
    /// id comes from the allocator; a failure to allocate asks nothing this time (the next
    /// heartbeat asks again).
    pub(super) async fn operator_for(&self, region: &Region, leader: &Peer) -> Option<Operator> {
        let rules = self.settings.rules(self.read(|s| s.replicas) as usize);
        let (next, stats) = self.neighbour(region);
        let report = Report {
            region,
            leader: leader.id,
            leader_store: leader.store_id,
            stats,
            next: next.as_ref().map(|(r, st)| (r, *st)),
        };
        let heard = self.decide(|sched, views, regions, now| {
            sched.heartbeat(&report, views, regions, &rules, now)
        });
        self.log_heard(&heard);
        let heard = match heard.decision {
            Decision::NeedsPeerId(plan) => {
                let first = match self.change(Op::AllocId(AllocIdRequest { count: 1 })).await {
                    Ok((None, PdOutput::Ids { first })) => first,
                    _ => return None,
                };
                let plan = plan.with_new_peer(first);
                let heard = self.decide(|sched, _, _, now| sched.start(&report, plan, &rules, now));
                self.log_heard(&heard);
                heard
            }
            _ => heard,
        };
        match heard.decision {
            Decision::Ask { op, step, first } => self.ask(region, op, step, first),
            Decision::Nothing | Decision::NeedsPeerId(_) => None,
        }
    }

    /// Runs one scheduler call under the heartbeat records' lock, with the store views and
    /// the running operators' regions from PD's map at hand. PD's state is not held during the
    /// call: computing the views reads it, and a second read lock taken by a thread that holds
    /// one can deadlock behind a waiting writer (the apply thread).
    fn decide(
        &self,
        call: impl for<'r> FnOnce(
            &mut schedule::Scheduler,
            &mut schedule::Views<'_>,
            &dyn Fn(u64) -> Option<&'r Region>,
            Instant,
        ) -> Heard,
    ) -> Heard {
        let now = Instant::now();
        let mut b = lock(&self.beats);
        let b = &mut *b;
        let running: HashMap<u64, Region> = self.read(|s| {
            b.sched
                .operators()
                .running()
                .filter_map(|o| s.regions.get(&o.region).map(|r| (o.region, r.clone())))
                .collect()
        });
        // The scheduler is taken out while the views closure borrows the other records.
        let mut sched = std::mem::replace(&mut b.sched, schedule::Scheduler::new(now));
        let regions = |id: u64| running.get(&id);
        let mut views = |fresh: bool| self.base_views(b, fresh);
        let heard = call(&mut sched, &mut views, &regions, now);
        b.sched = sched;
        if !heard.ended.is_empty() {
            // Their moves are in the region map now, no longer in the projection.
            b.views = None;
        }
        heard
    }

    /// The region right of `region` in PD's map with its last reported bytes and keys, and
    /// `region`'s own.
    fn neighbour(&self, region: &Region) -> (Option<WithStats>, (u64, u64)) {
        let next = if region.end_key.is_empty() {
            None
        } else {
            self.read(|s| {
                s.region_for(&region.end_key)
                    .filter(|n| n.start_key == region.end_key)
                    .cloned()
            })
        };
        let b = lock(&self.beats);
        let stats = |id: u64| b.regions.get(&id).map(|&(_, size, keys)| (size, keys));
        let next = next.and_then(|n| stats(n.id).map(|st| (n, st)));
        (next, stats(region.id).unwrap_or_default())
    }

    /// Logs and counts the operators a scheduler call started and ended.
    fn log_heard(&self, heard: &Heard) {
        for op in &heard.started {
            let kind = op.kind;
            let steps = op.steps.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            slog::info!(self.logger, "operator created"; "region" => op.region,
                "operator" => op.id, "kind" => kind.as_str(), "steps" => steps.join(", "),
                "reason" => &op.reason);
            crate::metrics::metrics()
                .operators_created
                .with_label_values(&[kind.as_str()])
                .inc();
        }
        for f in &heard.ended {
            let kind = f.op.kind.as_str();
            slog::info!(self.logger, "operator ended"; "region" => f.op.region, "kind" => kind,
                "operator" => f.op.id, "outcome" => %f.outcome,
                "secs" => f.at.duration_since(f.op.created).as_secs_f64());
            let label = match f.outcome {
                schedule::Outcome::Finished => "finished",
                schedule::Outcome::TimedOut => "timed_out",
                schedule::Outcome::Cancelled(_) => "cancelled",
            };
            crate::metrics::metrics()
                .operators_ended
                .with_label_values(&[kind, label])
                .inc();
        }
    }

    /// The operator step `step` as the answer to `region`'s heartbeat (logged and counted the
    /// first time it is asked).
    fn ask(&self, region: &Region, id: u64, step: schedule::Step, first: bool) -> Option<Operator> {
        use rdb_proto::pd::operator::Kind;
        use schedule::Step;
        let peer_of = |id: u64| region.peers.iter().find(|p| p.id == id).copied();
        let (kind, peer) = match step {
            Step::AddLearner { store, peer } => (
                Kind::AddLearner,
                Peer {
                    id: peer,
                    store_id: store,
                    learner: true,
                },
            ),
            Step::Promote { peer } => (Kind::Promote, peer_of(peer)?),
            Step::TransferLeader { peer } => (Kind::TransferLeader, peer_of(peer)?),
            Step::Remove { peer } => (Kind::Remove, peer_of(peer)?),
            Step::Merge { target } => {
                return self.ask_merge(region, id, target, first);
            }
        };
        let conf_ver = region.epoch.map_or(0, |e| e.conf_ver);
        let reason = lock(&self.beats)
            .sched
            .operators()
            .running()
            .find(|o| o.id == id)
            .map(|o| format!("{}: {}", o.kind.as_str(), o.reason))
            .unwrap_or_default();
        if first {
            slog::info!(self.logger, "operator step"; "region" => region.id, "operator" => id,
                "kind" => kind.as_str_name(), "peer" => peer.id, "store" => peer.store_id,
                "conf_ver" => conf_ver, "reason" => &reason);
            crate::metrics::metrics()
                .operators
                .with_label_values(&[kind.as_str_name()])
                .inc();
        }
        Some(Operator {
            kind: kind as i32,
            peer: Some(peer),
            conf_ver,
            reason,
            target_region: 0,
        })
    }

    /// The merge step as the answer to `region`'s heartbeat.
    fn ask_merge(&self, region: &Region, id: u64, target: u64, first: bool) -> Option<Operator> {
        use rdb_proto::pd::operator::Kind;
        let conf_ver = region.epoch.map_or(0, |e| e.conf_ver);
        if first {
            slog::info!(self.logger, "operator step"; "region" => region.id, "operator" => id,
                "kind" => Kind::Merge.as_str_name(), "target" => target,
                "conf_ver" => conf_ver);
            crate::metrics::metrics()
                .operators
                .with_label_values(&[Kind::Merge.as_str_name()])
                .inc();
        }
        Some(Operator {
            kind: Kind::Merge as i32,
            peer: None,
            conf_ver,
            reason: format!("merge: into region {target}"),
            target_region: target,
        })
    }

    /// The running operators and those that ended lately, for `operator list`.
    pub(super) fn operator_infos(&self) -> Vec<OperatorInfo> {
        let b = lock(&self.beats);
        let info = |op: &schedule::Operator, status: String, end: Instant| OperatorInfo {
            id: op.id,
            region_id: op.region,
            kind: op.kind.as_str().to_string(),
            steps: op.steps.iter().map(|s| s.to_string()).collect(),
            done: op.done as u32,
            status,
            age_ms: end.duration_since(op.created).as_millis() as u64,
            reason: op.reason.clone(),
        };
        let now = Instant::now();
        let ops = b.sched.operators();
        ops.recent()
            .map(|f| info(&f.op, f.outcome.to_string(), f.at))
            .chain(ops.running().map(|o| info(o, "running".into(), now)))
            .collect()
    }
}
