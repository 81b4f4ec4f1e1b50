//! A PD-mode store's reports on its clock: registration until PD has its addresses, its beat
//! for the store heartbeats the PD worker sends on the worker's clock (see [`pd_worker`]), a
//! heartbeat for every region it leads (at once when it starts leading), and the split checks
//! of the regions it leads, whose results come back as events (see [`split_check`]). A
//! config-file node has no PD: its ticks stop before these.

use super::*;
use task::Waiter;

impl StoreTask {
    pub(super) fn on_tick(&mut self) {
        crate::metrics::metrics().ticks.inc();
        self.core.tick();
        self.observer.tick(&self.core, &self.logger);
        if self.statics.is_some() {
            // No PD to report to, and one region that never splits.
            return;
        }
        let now = Instant::now();
        if !self.registered
            && self
                .last_register
                .is_none_or(|t| now.duration_since(t) >= REGISTER_EVERY)
        {
            self.last_register = Some(now);
            let _ = self.jobs.send(Job::Register(self.me.clone(), self.token));
        }
        self.report_leadership(
            now.duration_since(self.last_region_heartbeat) >= REGION_HEARTBEAT_EVERY,
        );
        // The PD worker sends the store's heartbeats on its own clock from this (see
        // `pd_worker::TaskBeat`): a tick that comes late is a busy task, none is a hung one.
        *lock(&self.beat) = pd_worker::TaskBeat {
            ticked: Some(now),
            regions: self.core.region_ids().len() as u64,
        };
        if now.duration_since(self.last_split_check) >= self.split.check_interval {
            self.last_split_check = now;
            self.check_splits();
        }
        self.splitting
            .retain(|_, since| since.elapsed() < SPLIT_RETRY_AFTER);
    }

    /// Sends a heartbeat for every region that this store started leading (all of them
    /// with `all`), so PD learns new leaders and ranges at once.
    pub(super) fn report_leadership(&mut self, all: bool) {
        let led: BTreeSet<u64> = self
            .core
            .region_ids()
            .into_iter()
            .filter(|&id| self.core.core(id).is_some_and(|c| c.replica().is_leader()))
            .collect();
        for &id in &led {
            if all || !self.led.contains(&id) {
                self.heartbeat(id);
            }
        }
        if all {
            self.last_region_heartbeat = Instant::now();
        }
        self.led = led;
    }

    pub(super) fn heartbeat(&mut self, id: u64) {
        let (Some(region), Some(leader)) = (self.core.region(id).cloned(), self.core.leader_of(id))
        else {
            return;
        };
        let size = self.sizes.get(&id).copied().unwrap_or_default();
        let _ = self.jobs.send(Job::RegionHeartbeat {
            region,
            leader,
            size,
        });
    }

    /// Checks every region led here on a blocking thread (see [`split_check`]); each result
    /// comes back as an event.
    pub(super) fn check_splits(&mut self) {
        let regions: Vec<(Region, Option<Counted>)> = self
            .led
            .iter()
            .filter(|id| !self.splitting.contains_key(id))
            .filter_map(|&id| self.core.region(id).cloned())
            .map(|r| {
                let last = self.counted.get(&r.id).copied();
                (r, last)
            })
            .collect();
        if regions.is_empty() {
            return;
        }
        self.checks += 1;
        let check = self.checks;
        let engine = self.core.engine().clone();
        let split = self.split;
        let (events, logger) = (self.events_tx.clone(), self.logger.clone());
        tokio::task::spawn_blocking(move || {
            for (region, measure) in split_check::check_regions(&split, &engine, &regions, check) {
                match measure {
                    Ok(m) => {
                        let _ = events.send(Event::Measured(region, m));
                    }
                    Err(e) => {
                        warn!(logger, "cannot check a region's size"; "region" => region,
                            "error" => %e)
                    }
                }
            }
        });
    }

    pub(super) fn measured(&mut self, region: u64, measure: Measure) {
        let size = measure.size(self.counted.get(&region));
        self.sizes.insert(region, size);
        if let Some(c) = measure.counted() {
            self.counted.insert(region, c);
        }
        let Some(key) = measure.counted.and_then(|c| c.middle) else {
            return;
        };
        let version = measure.version;
        let current = self.core.region(region).map(|r| region::epoch(r).version);
        let leads = self.led.contains(&region);
        if current != Some(version) || !leads || self.splitting.contains_key(&region) {
            return;
        }
        let peers = self.core.region(region).map_or(0, |r| r.peers.len());
        self.splitting.insert(region, Instant::now());
        let (keys, bytes) = self.sizes.get(&region).copied().unwrap_or_default();
        info!(self.logger, "region over its split threshold"; "region" => region,
            "keys" => keys, "bytes" => bytes);
        let _ = self.jobs.send(Job::SplitIds {
            region,
            version,
            key,
            count: 1 + peers as u32,
        });
    }

    pub(super) fn propose_split(&mut self, region: u64, version: u64, key: Vec<u8>, first_id: u64) {
        let Some(meta) = self.core.region(region).cloned() else {
            return;
        };
        if region::epoch(&meta).version != version {
            self.splitting.remove(&region);
            return;
        }
        let peer_ids: Vec<u64> = (1..=meta.peers.len() as u64)
            .map(|i| first_id + i)
            .collect();
        let req = self.request_id(Waiter::Split(region));
        info!(self.logger, "proposing a split"; "region" => region, "new_region" => first_id,
            "key" => ?String::from_utf8_lossy(&key));
        if let Err(e) = self
            .core
            .propose_split(region, &key, first_id, &peer_ids, req)
        {
            self.waiters.remove(&req);
            self.splitting.remove(&region);
            warn!(self.logger, "split not proposed"; "region" => region, "why" => ?e);
        }
    }

    /// Carries out PD's next step for `region` (see `rdb_pd::schedule`) if this store still
    /// leads the region at the membership the step was computed for: through the region's own
    /// log, with the checks of an operator's `member` command (a promotion waits for the
    /// learner to catch up: refused until then, PD asks again at the next heartbeat).
    pub(super) fn run_operator(&mut self, region: u64, step: pdc::OperatorStep) {
        use crate::raft_core::MemberStep;
        use rdb_client::pd::Operator;
        let Some(meta) = self.core.region(region) else {
            return;
        };
        let leads = self
            .core
            .core(region)
            .is_some_and(|c| c.replica().is_leader());
        if !leads || region::epoch(meta).conf_ver != step.conf_ver {
            debug!(self.logger, "PD's operator is for another leader or membership; ignored";
                "region" => region, "conf_ver" => step.conf_ver);
            return;
        }
        let (what, steps, added) = match step.op {
            Operator::AddLearner(p) => (
                format!("add learner {} on store {}", p.id, p.store_id),
                vec![MemberStep::AddLearner(p.id)],
                vec![rdb_storage::MemberRecord {
                    id: p.id,
                    store_id: p.store_id,
                    ..Default::default()
                }],
            ),
            Operator::Promote(p) => (
                format!("promote {}", p.id),
                vec![MemberStep::Promote(p.id)],
                Vec::new(),
            ),
            Operator::Remove(p) => (
                format!("remove {} from store {}", p.id, p.store_id),
                vec![MemberStep::Remove(p.id)],
                Vec::new(),
            ),
            Operator::Merge(target) => {
                info!(self.logger, "running PD's operator"; "region" => region,
                    "step" => format!("merge into region {target}"), "reason" => &step.reason);
                let what = format!("merge into region {target}");
                let req = self.request_id(Waiter::Operator(region, what));
                if let Err(e) = self.core.prepare_merge(region, target, req) {
                    self.waiters.remove(&req);
                    debug!(self.logger, "PD's merge not started"; "region" => region,
                        "target" => target, "why" => ?e);
                }
                return;
            }
            Operator::TransferLeader(p) => {
                if let Err(e) = self.core.transfer_leader(region, p.id) {
                    debug!(self.logger, "PD's leader transfer not started"; "region" => region,
                        "to" => p.id, "why" => ?e);
                }
                return;
            }
        };
        info!(self.logger, "running PD's operator"; "region" => region, "step" => &what,
            "reason" => &step.reason);
        let req = self.request_id(Waiter::Operator(region, what));
        if let Err(e) = self.core.change_members(region, req, &steps, &added) {
            self.waiters.remove(&req);
            warn!(self.logger, "PD's operator refused"; "region" => region,
                "why" => %task::region_error(e));
        }
    }
}
