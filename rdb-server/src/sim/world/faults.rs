//! The faults a run injects: process crashes, power losses, partitions, pauses, slow clocks,
//! leadership handovers, compactions, and (as a cluster changes under load) splits, merges
//! and membership changes.

use rand::Rng;
use rdb_proto::command::MemberRecord;

use super::{pd, Mode, World, STEPS_PER_TICK};
use crate::raft_core::MemberStep;

impl World {
    pub(super) fn heal(&mut self) {
        self.healing = true;
        self.cut.clear();
        self.note("heal everything: links, pauses, clocks; restart stopped stores".into());
        for (i, n) in self.nodes.iter_mut().enumerate() {
            n.paused_until = 0;
            n.slow_until = 0;
            n.appends_lag_until = 0;
            if n.store.is_none() && !self.lost.contains(&i) {
                n.restart_at = Some(0);
            }
        }
    }

    pub(super) fn maybe_fault(&mut self) -> Result<(), String> {
        if !self.rng.gen_ratio(1, self.sc.fault_every.max(1) as u32) {
            return Ok(());
        }
        if self.sc.membership && self.rng.gen_ratio(1, 5) {
            self.change_membership();
            return Ok(());
        }
        if self.sc.scheduling && self.rng.gen_ratio(1, 10) {
            if self.rng.gen_bool(0.5) {
                self.lose_store();
            } else {
                self.decommission();
            }
            return Ok(());
        }
        if self.sc.mode == Mode::Pd && self.rng.gen_ratio(1, 4) {
            self.split();
            return Ok(());
        }
        if self.sc.mode == Mode::Pd && self.sc.merges && self.rng.gen_ratio(1, 6) {
            self.merge();
            return Ok(());
        }
        let n = self.nodes.len();
        let leader = self.random_region().and_then(|r| self.leader(r));
        let target = match leader {
            Some(l) if self.rng.gen_bool(0.6) => l,
            _ => self.rng.gen_range(0..n),
        };
        match self.rng.gen_range(0..100) {
            0..=24 => {
                if self.nodes[target].store.is_some() {
                    let after = self.rng.gen_range(5..80) * STEPS_PER_TICK;
                    // A process crash, or the power of its machine.
                    let power = self.rng.gen_bool(0.5);
                    self.crash(target, after, power)?;
                }
            }
            25..=32 => {
                self.note("power loss on every store".into());
                for i in 0..n {
                    if self.nodes[i].store.is_some() {
                        let after = self.rng.gen_range(1..40) * STEPS_PER_TICK;
                        self.crash(i, after, true)?;
                    }
                }
            }
            33..=54 => {
                let mut side: Vec<bool> = (0..n).map(|_| self.rng.gen_bool(0.5)).collect();
                side[target] = true;
                self.cut.clear();
                for a in 0..n {
                    for b in 0..n {
                        if side[a] != side[b] {
                            self.cut.insert((a, b));
                        }
                    }
                }
                self.heal_at = self.now + self.rng.gen_range(10..100) * STEPS_PER_TICK;
                let group: Vec<usize> = (0..n).filter(|&i| side[i]).map(|i| i + 1).collect();
                self.note(format!(
                    "partition stores {group:?} from the rest until step {}",
                    self.heal_at
                ));
            }
            55..=64 => self.hand_over(),
            65..=69 => {
                // Compaction drops dedup records past their window.
                if let Some(s) = &self.nodes[target].store {
                    s.engine().compact_data();
                    self.note(format!("compact s{}'s data", target + 1));
                }
            }
            70..=84 => {
                let until = self.now + self.rng.gen_range(10..80) * STEPS_PER_TICK;
                self.nodes[target].paused_until = until;
                self.note(format!("pause s{} until step {until}", target + 1));
            }
            _ if self.rng.gen_bool(0.5) => {
                let until = self.now + self.rng.gen_range(20..120) * STEPS_PER_TICK;
                self.nodes[target].slow_until = until;
                self.note(format!("slow clock on s{} until step {until}", target + 1));
            }
            _ => {
                // Appends queue behind something big on the way to one store, while its small
                // messages (heartbeats, read index answers) pass: it learns a read index
                // before it has the entries below it, which a follower read must wait for.
                let until = self.now + self.rng.gen_range(20..120) * STEPS_PER_TICK;
                self.nodes[target].appends_lag_until = until;
                self.note(format!("appends to s{} lag until step {until}", target + 1));
            }
        }
        Ok(())
    }

    /// Stores neither lost nor removed: those PD may place replicas on.
    fn placeable(&self) -> Vec<usize> {
        let removed = |i: usize| {
            self.pd
                .as_ref()
                .is_some_and(|pd| pd.removed.contains(&(i as u64 + 1)))
        };
        (0..self.nodes.len())
            .filter(|&i| !self.lost.contains(&i) && !removed(i))
            .collect()
    }

    /// A store is lost for good (its machine burnt): it never runs again, and PD replaces its
    /// peers. Once per run (a second loss before the repair of the first may take a quorum,
    /// which no replication of three survives), only while more stores than a region's
    /// replicas would remain, and not when the store drawn holds half of some region's voters
    /// (membership faults can leave a region with two), which no repair could follow.
    fn lose_store(&mut self) {
        if !self.lost.is_empty() {
            return;
        }
        let live: Vec<usize> = self
            .placeable()
            .into_iter()
            .filter(|&i| self.nodes[i].store.is_some())
            .collect();
        if self.placeable().len() <= pd::REPLICAS || live.is_empty() {
            return;
        }
        let i = live[self.rng.gen_range(0..live.len())];
        if self.loss_takes_a_quorum(i) {
            return;
        }
        let n = &mut self.nodes[i];
        n.store = None;
        n.inbox.clear();
        n.requests.clear();
        n.restart_at = None;
        self.lost.insert(i);
        self.note(format!("s{} is lost for good", i + 1));
    }

    /// Whether losing store `i` (beside any lost before) would leave some region, as some
    /// replica of it has its configuration (both halves of a joint one), without a majority of
    /// its voters.
    fn loss_takes_a_quorum(&self, i: usize) -> bool {
        let gone = |store: u64| {
            let s = (store as usize).wrapping_sub(1);
            s == i || self.lost.contains(&s)
        };
        let stores = self.nodes.iter().filter_map(|n| n.store.as_ref());
        stores.into_iter().any(|st| {
            st.region_ids().into_iter().any(|id| {
                let (Some(c), Some(meta)) = (st.core(id), st.region(id)) else {
                    return false;
                };
                let kept = |peer: &u64| {
                    meta.peers
                        .iter()
                        .any(|p| p.id == *peer && !gone(p.store_id))
                };
                let cs = c.replica().conf_state();
                let quorum_lost = [&cs.voters, &cs.voters_outgoing].into_iter().any(|voters| {
                    !voters.is_empty()
                        && 2 * voters.iter().filter(|v| kept(v)).count() <= voters.len()
                });
                quorum_lost
            })
        })
    }

    /// A store is decommissioned (`rdb-cli --pd ... store remove`): PD moves its peers away.
    /// Only while more stores than a region's replicas would remain.
    fn decommission(&mut self) {
        let candidates = self.placeable();
        if candidates.len() <= pd::REPLICAS {
            return;
        }
        let i = candidates[self.rng.gen_range(0..candidates.len())];
        if let Some(pd) = &mut self.pd {
            pd.removed.insert(i as u64 + 1);
        }
        self.note(format!("s{} is decommissioned", i + 1));
    }

    /// A region some store hosts, at random.
    fn random_region(&mut self) -> Option<u64> {
        let ids: Vec<u64> = self.regions().into_keys().collect();
        (!ids.is_empty()).then(|| ids[self.rng.gen_range(0..ids.len())])
    }

    /// A region's leader gives way to another of its voters at once.
    fn hand_over(&mut self) {
        let Some(id) = self.random_region() else {
            return;
        };
        let Some(l) = self.leader(id) else { return };
        let Some(st) = &self.nodes[l].store else {
            return;
        };
        let Some(c) = st.core(id) else { return };
        let me = c.replica().id();
        let others: Vec<u64> = c
            .replica()
            .voters()
            .into_iter()
            .filter(|&v| v != me)
            .collect();
        if others.is_empty() {
            return;
        }
        let to = others[self.rng.gen_range(0..others.len())];
        if let Some(st) = &mut self.nodes[l].store {
            let started = st.transfer_leader(id, to).is_ok();
            self.note(format!(
                "region {id}: leader on s{} hands over to peer {to} ({})",
                l + 1,
                if started { "started" } else { "refused" }
            ));
        }
    }

    /// A region's leader splits it, with ids drawn as PD draws them: at a random point between
    /// or around the keys, or, half the time when a write that may have applied waits to be
    /// sent again, just past the start of its key's region, so that the key moves to the new
    /// region before the retry (which must still find the first attempt's dedup record).
    fn split(&mut self) {
        let unsure: Vec<String> = self
            .clients
            .iter()
            .filter_map(|c| c.pending.as_ref())
            .filter(|p| p.maybe_applied && p.retry_at.is_some())
            .map(|p| p.op.key().to_string())
            .collect();
        let moving = (!unsure.is_empty() && self.rng.gen_bool(0.5))
            .then(|| unsure[self.rng.gen_range(0..unsure.len())].clone());
        let key = moving.clone().unwrap_or_else(|| {
            format!(
                "k{}{}",
                self.rng.gen_range(0..self.sc.keys),
                ["", "~", "5"][self.rng.gen_range(0..3)]
            )
        });
        let Some(l) = (0..self.nodes.len()).find(|&i| {
            self.nodes[i].store.as_ref().is_some_and(|s| {
                s.region_for_key(key.as_bytes())
                    .and_then(|r| s.core(r.id))
                    .is_some_and(|c| c.replica().is_leader())
            })
        }) else {
            return;
        };
        let Some(r) = self.nodes[l]
            .store
            .as_ref()
            .and_then(|s| s.region_for_key(key.as_bytes()).cloned())
        else {
            return;
        };
        let key = match &moving {
            // Between the region's start and the key ("k..." sorts after "a").
            Some(_) if r.start_key.is_empty() => "a".to_string(),
            Some(_) => format!("{}~", String::from_utf8_lossy(&r.start_key)),
            None => key,
        };
        if r.start_key == key.as_bytes()
            || moving.as_ref().is_some_and(|k| key.as_str() >= k.as_str())
        {
            return;
        }
        let new_id = self.draw_id();
        let peer_ids: Vec<u64> = r.peers.iter().map(|_| self.draw_id()).collect();
        let req = self.next_request;
        self.next_request += 1;
        let Some(st) = &mut self.nodes[l].store else {
            return;
        };
        let proposed = st
            .propose_split(r.id, key.as_bytes(), new_id, &peer_ids, req)
            .is_ok();
        self.note(format!(
            "s{} proposes splitting region {} at {key} into region {new_id} ({})",
            l + 1,
            r.id,
            if proposed { "proposed" } else { "refused" }
        ));
    }

    /// A region's leader asks to merge it into a neighbour (either side), as an operator
    /// would (specs/017-merge). Refusals (peers on different stores, a change pending, a
    /// neighbour this store does not host) are part of the test.
    fn merge(&mut self) {
        let Some(source) = self.random_region() else {
            return;
        };
        let Some(l) = self.leader(source) else { return };
        let Some(st) = &self.nodes[l].store else {
            return;
        };
        let Some(meta) = st.region(source).cloned() else {
            return;
        };
        let right = (!meta.end_key.is_empty())
            .then(|| st.region_for_key(&meta.end_key).map(|r| r.id))
            .flatten();
        let left = st.region_ids().into_iter().find(|&id| {
            st.region(id)
                .is_some_and(|r| r.end_key == meta.start_key && !r.end_key.is_empty())
        });
        let target = match (left, right) {
            (Some(a), Some(b)) => {
                if self.rng.gen_bool(0.5) {
                    a
                } else {
                    b
                }
            }
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => return,
        };
        let req = self.next_request;
        self.next_request += 1;
        let Some(st) = &mut self.nodes[l].store else {
            return;
        };
        let proposed = st.prepare_merge(source, target, req);
        self.note(format!(
            "s{} proposes merging region {source} into region {target} ({})",
            l + 1,
            match proposed {
                Ok(()) => "proposed".to_string(),
                Err(e) => format!("refused: {e:?}"),
            }
        ));
    }

    /// A membership change of a region, proposed on its leader: add a learner on a store
    /// without a peer of the region, promote it, remove a voter (the leader too: it hands over
    /// first), or promote and remove in one joint change. Refusals (a learner behind, a change
    /// in flight) are part of the test. In a config-file cluster a peer's id is its store's,
    /// and a store whose peer was removed never joins again.
    fn change_membership(&mut self) {
        let Some(id) = self.random_region() else {
            return;
        };
        let Some(l) = self.leader(id) else { return };
        let Some(st) = &self.nodes[l].store else {
            return;
        };
        let (Some(c), Some(meta)) = (st.core(id), st.region(id)) else {
            return;
        };
        let r = c.replica();
        let voters = r.voters();
        let learner = meta.peers.iter().find(|p| r.is_learner(p.id)).map(|p| p.id);
        let removable: Vec<u64> = voters.clone();
        let hosting: Vec<u64> = meta.peers.iter().map(|p| p.store_id).collect();
        // A config-file node joins once: its peer id is its node id, which never comes back
        // once removed.
        let free: Vec<u64> = (1..=self.nodes.len() as u64)
            .filter(|s| !hosting.contains(s))
            .filter(|s| self.sc.mode == Mode::Pd || !self.joined.contains(s))
            .collect();
        let pick = |rng: &mut rand::rngs::StdRng, from: &[u64]| from[rng.gen_range(0..from.len())];
        let mut added = Vec::new();
        let steps = if let Some(learner) = learner {
            if self.rng.gen_bool(0.5) || removable.is_empty() {
                vec![MemberStep::Promote(learner)]
            } else {
                vec![
                    MemberStep::Promote(learner),
                    MemberStep::Remove(pick(&mut self.rng, &removable)),
                ]
            }
        } else if voters.len() > 3 {
            vec![MemberStep::Remove(pick(&mut self.rng, &removable))]
        } else if !free.is_empty() {
            let store = pick(&mut self.rng, &free);
            let peer = match self.sc.mode {
                Mode::Cluster => store,
                Mode::Pd => self.draw_id(),
            };
            self.joined.insert(store);
            added.push(MemberRecord {
                id: peer,
                store_id: store,
                ..Default::default()
            });
            vec![MemberStep::AddLearner(peer)]
        } else {
            return;
        };
        let req = self.next_request;
        self.next_request += 1;
        let Some(st) = &mut self.nodes[l].store else {
            return;
        };
        let proposed = st.change_members(id, req, &steps, &added).is_ok();
        self.note(format!(
            "region {id}: s{} proposes membership change {steps:?} ({})",
            l + 1,
            if proposed { "proposed" } else { "refused" }
        ));
    }

    /// Stops store `i` (a process crash; with `power`, its machine's power: its newest log
    /// loses part of what was not synced) and restarts it `restart_after` steps later.
    pub(super) fn crash(
        &mut self,
        i: usize,
        restart_after: u64,
        power: bool,
    ) -> Result<(), String> {
        let n = &mut self.nodes[i];
        n.store = None;
        n.inbox.clear();
        n.requests.clear();
        n.paused_until = 0;
        n.slow_until = 0;
        n.restart_at = Some(self.now + restart_after);
        let what = if power {
            let cut = self.nodes[i].disk.power_cut(&mut self.rng)?;
            self.stats.lost_bytes += cut.lost;
            format!(
                "power cut on s{} (lost {} of {} unsynced log bytes)",
                i + 1,
                cut.lost,
                cut.unsynced
            )
        } else {
            format!("crash s{}", i + 1)
        };
        self.note(format!(
            "{what}, restart at step {}",
            self.now + restart_after
        ));
        Ok(())
    }
}
