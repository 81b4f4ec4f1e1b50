//! Where the service meets the scheduler (see [`crate::schedule`]): the store views the
//! checkers read, the operator step for a region's heartbeat answer (a new peer's id from the
//! allocator), the operators for `operator list`, and the tombstone of a store whose removal
//! drained it.

use std::collections::HashSet;

use super::*;
use crate::schedule::{self, Plan, Progress, StoreView};

/// Store views older than this are computed again (they are O(regions) to compute).
const VIEWS_FRESH_FOR: Duration = Duration::from_secs(1);

/// A region whose membership has not changed for this long has settled: extra peers are not
/// an operator's (or a person's) work halfway, and the replica checker removes them.
const SETTLED_AFTER: Duration = Duration::from_secs(20);

/// Balance waits this long into a PD leader's term: until then it has not heard every
/// region's leader (they report every 2 s) and would move leaderships on a partial count.
const BALANCE_AFTER: Duration = Duration::from_secs(5);

impl PdService {
    /// Every store as the checkers see it, from PD's region map and the leader's heartbeat
    /// records: gone when tombstoned, being removed or silent for longer than
    /// `max_store_down`, up when heard lately; regions, leaders and bytes on it.
    fn compute_views(&self, b: &Heartbeats) -> Vec<StoreView> {
        let labels = &self.settings.location_labels;
        let mut views: HashMap<u64, StoreView> = self.read(|s| {
            let mut views: HashMap<u64, StoreView> = s
                .stores
                .values()
                .map(|st| {
                    let label = |key: &String| {
                        st.labels
                            .iter()
                            .find(|l| &l.key == key)
                            .map(|l| l.value.clone())
                            .unwrap_or_default()
                    };
                    let view = StoreView {
                        id: st.id,
                        labels: labels.iter().map(label).collect(),
                        ..Default::default()
                    };
                    (st.id, (view, st.state))
                })
                .map(|(id, (mut view, state))| {
                    // A store being removed is gone for placement: its peers move away.
                    let removed = state == StoreState::Tombstone as i32
                        || state == StoreState::Offline as i32;
                    let silent = b
                        .stores
                        .get(&id)
                        .copied()
                        .or(b.since)
                        .map_or(Duration::ZERO, |t| t.elapsed());
                    view.gone = removed || silent > self.max_store_down;
                    view.up = !removed && silent <= self.store_down_after;
                    (id, view)
                })
                .collect();
            for r in s.regions.values() {
                let size = b.regions.get(&r.id).map_or(0, |(_, size, _)| *size);
                for p in &r.peers {
                    if let Some(v) = views.get_mut(&p.store_id) {
                        v.regions += 1;
                        v.size = v.size.saturating_add(size);
                    }
                }
            }
            views
        });
        for (leader, _, _) in b.regions.values() {
            if let Some(v) = leader.as_ref().and_then(|l| views.get_mut(&l.store_id)) {
                v.leaders += 1;
            }
        }
        let mut views: Vec<StoreView> = views.into_values().collect();
        views.sort_by_key(|v| v.id);
        views
    }

    /// The store views, with the running operators' moves counted as done and each store's
    /// snapshot room against `store_limit`.
    fn store_views(&self) -> Vec<StoreView> {
        let mut b = lock(&self.beats);
        let fresh = b
            .views
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < VIEWS_FRESH_FOR);
        if !fresh {
            let views = self.compute_views(&b);
            b.views = Some((Instant::now(), views));
        }
        let mut views = b.views.as_ref().map(|(_, v)| v.clone()).unwrap_or_default();
        let limit = usize::try_from(self.settings.store_limit).unwrap_or(usize::MAX);
        self.read(|s| b.ops.project(&mut views, limit, |id| s.regions.get(&id)));
        views
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

    /// The step to ask of `region`'s leader in the answer to its heartbeat: the next step of
    /// its running operator, or the first of a new one if a checker has a plan. A new peer's
    /// id comes from the allocator; a failure to allocate asks nothing this time (the next
    /// heartbeat asks again).
    pub(super) async fn operator_for(&self, region: &Region, leader: &Peer) -> Option<Operator> {
        let now = Instant::now();
        let timeout = self.settings.operator_timeout();
        let conf_ver = region.epoch.map_or(0, |e| e.conf_ver);
        // A running operator's step that needs a store that is not up is cancelled, or a move
        // toward a store lost meanwhile would hold the region (and its sender's snapshot
        // room) until its timeout, before the replica checker may remove the stranded learner.
        let runs = lock(&self.beats).ops.runs(region.id);
        let down: HashSet<u64> = if runs {
            self.store_views()
                .iter()
                .filter(|v| !v.up)
                .map(|v| v.id)
                .collect()
        } else {
            HashSet::new()
        };
        let is_gone = |s: u64| down.contains(&s);
        let (progress, settled, balance_ok) = {
            let mut b = lock(&self.beats);
            let since = match b.confs.get(&region.id) {
                Some(&(v, since)) if v == conf_ver => since,
                _ => {
                    b.confs.insert(region.id, (conf_ver, now));
                    now
                }
            };
            let version = region.epoch.map_or(0, |e| e.version);
            if b.versions
                .get(&region.id)
                .is_none_or(|&(v, _)| v != version)
            {
                b.versions.insert(region.id, (version, now));
            }
            let progress = b.ops.check(region, leader.id, timeout, now, is_gone);
            if matches!(progress, Progress::Ended(_)) {
                // Its moves are in the region map now, no longer in the projection.
                b.views = None;
            }
            let balance_ok = b.since.is_some_and(|t| t.elapsed() >= BALANCE_AFTER);
            (
                progress,
                now.duration_since(since) >= SETTLED_AFTER,
                balance_ok,
            )
        };
        let replicas = self.read(|s| s.replicas) as usize;
        let mut views = self.store_views();
        match progress {
            Progress::Ask(id, step, first) => {
                match self.doomed(region, leader.id, &views, replicas, settled) {
                    None => return self.ask(region, id, step, first),
                    Some(why) => {
                        lock(&self.beats).ops.cancel(region.id, why.clone(), now);
                        self.ended(region.id, &schedule::Outcome::Cancelled(why));
                        // Its moves no longer count.
                        views = self.store_views();
                    }
                }
            }
            Progress::Ended(outcome) => self.ended(region.id, &outcome),
            Progress::Idle => {}
        }
        let size = lock(&self.beats)
            .regions
            .get(&region.id)
            .map_or(0, |(_, size, _)| *size);
        let balance = schedule::Balance {
            leaders: self.settings.balance_leaders && balance_ok,
            regions: self.settings.balance_regions && balance_ok,
        };
        if lock(&self.beats).ops.merging_into(region.id) {
            // A region about to take a neighbour's range keeps its peers until then.
            return None;
        }
        let plan = schedule::replica_plan(region, leader.id, &views, replicas, settled)
            .or_else(|| schedule::balance_plan(region, leader.id, size, &views, replicas, balance))
            .or_else(|| self.merge_plan(region, &views, replicas))?;
        let plan = if plan.new_peer() {
            match self.change(Op::AllocId(AllocIdRequest { count: 1 })).await {
                Ok((None, PdOutput::Ids { first })) => plan.with_new_peer(first),
                _ => return None,
            }
        } else {
            plan
        };
        let (kind, reason, steps) = (
            plan.kind,
            plan.reason.clone(),
            plan.steps
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        );
        let progress = {
            let mut b = lock(&self.beats);
            let limit = usize::try_from(self.settings.store_limit).unwrap_or(usize::MAX);
            b.ops
                .start(region.id, plan, Some(leader.store_id), limit, now)?;
            b.ops.check(region, leader.id, timeout, now, is_gone)
        };
        slog::info!(self.logger, "operator created"; "region" => region.id,
            "kind" => kind.as_str(), "steps" => steps, "reason" => reason);
        crate::metrics::metrics()
            .operators_created
            .with_label_values(&[kind.as_str()])
            .inc();
        match progress {
            Progress::Ask(id, step, first) => self.ask(region, id, step, first),
            Progress::Ended(outcome) => {
                self.ended(region.id, &outcome);
                None
            }
            Progress::Idle => None,
        }
    }

    /// The merge checker's plan for `region` and its right neighbour in PD's map, if both are
    /// small by the last reports of their leaders, neither changed its range within
    /// `split_merge_interval_secs` (as this PD leader saw them), and the neighbour has no
    /// operator.
    fn merge_plan(&self, region: &Region, views: &[StoreView], replicas: usize) -> Option<Plan> {
        let rules = self.settings.merge_rules();
        if rules.max_size == 0 || region.end_key.is_empty() {
            return None;
        }
        let next = self.read(|s| {
            s.region_for(&region.end_key)
                .filter(|n| n.start_key == region.end_key)
                .cloned()
        })?;
        let b = lock(&self.beats);
        let interval = Duration::from_secs(self.settings.split_merge_interval_secs);
        let settled = |id: u64| {
            b.versions
                .get(&id)
                .is_some_and(|(_, since)| since.elapsed() >= interval)
        };
        if !settled(region.id) || !settled(next.id) || b.ops.runs(next.id) {
            return None;
        }
        let stats = |id: u64| b.regions.get(&id).map(|&(_, size, keys)| (size, keys));
        let (mine, theirs) = (stats(region.id)?, stats(next.id)?);
        schedule::merge_plan(region, mine, &next, theirs, views, replicas, rules)
    }

    /// Why the running balance operator of `region` must stop, if it must: the replica
    /// checker has work for the region (a repair comes first).
    fn doomed(
        &self,
        region: &Region,
        leader: u64,
        views: &[StoreView],
        replicas: usize,
        settled: bool,
    ) -> Option<String> {
        let kind = lock(&self.beats).ops.of(region.id).map(|o| o.kind);
        if kind == Some(schedule::Kind::Replica) {
            return None;
        }
        let repair = schedule::replica_plan(region, leader, views, replicas, settled)?;
        Some(format!("replaced by a repair: {}", repair.reason))
    }

    /// Logs and counts an operator that ended.
    fn ended(&self, region: u64, outcome: &schedule::Outcome) {
        let b = lock(&self.beats);
        let Some(f) = b.ops.recent().last() else {
            return;
        };
        let kind = f.op.kind.as_str();
        slog::info!(self.logger, "operator ended"; "region" => region, "kind" => kind,
            "operator" => f.op.id, "outcome" => %outcome,
            "secs" => f.at.duration_since(f.op.created).as_secs_f64());
        let label = match outcome {
            schedule::Outcome::Finished => "finished",
            schedule::Outcome::TimedOut => "timed_out",
            schedule::Outcome::Cancelled(_) => "cancelled",
        };
        crate::metrics::metrics()
            .operators_ended
            .with_label_values(&[kind, label])
            .inc();
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
            .ops
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
        b.ops
            .recent()
            .map(|f| info(&f.op, f.outcome.to_string(), f.at))
            .chain(b.ops.running().map(|o| info(o, "running".into(), now)))
            .collect()
    }
}
