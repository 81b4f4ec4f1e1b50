//! The faults a run injects: crashes, power loss, partitions, pauses and slow clocks.

use rand::Rng;

use super::{World, STEPS_PER_TICK};
use crate::raft_core::MemberStep;

impl World {
    pub(super) fn heal(&mut self) {
        self.healing = true;
        self.cut.clear();
        self.note("heal everything: links, pauses, clocks; restart crashed nodes".into());
        for (i, n) in self.nodes.iter_mut().enumerate() {
            n.paused_until = 0;
            n.slow_until = 0;
            if n.core.is_none() && !self.removed.contains(&i) {
                n.restart_at = Some(0);
            }
        }
    }

    /// A membership change proposed on the leader: add the spare as a learner, promote it,
    /// remove a voter (the leader too: it hands over first), or promote and remove in one
    /// joint change. Refusals (a learner behind, a change in flight) are part of the test.
    fn change_membership(&mut self) {
        let Some(l) = self.leader() else { return };
        let spare = self.sc.nodes as u64 + 1;
        let Some(core) = &self.nodes[l].core else {
            return;
        };
        let r = core.replica();
        let voters = r.voters();
        let removable: Vec<u64> = voters.iter().copied().filter(|&v| v != spare).collect();
        let pick = |rng: &mut rand::rngs::StdRng| removable[rng.gen_range(0..removable.len())];
        let steps = if r.is_learner(spare) {
            if self.rng.gen_bool(0.5) || removable.is_empty() {
                vec![MemberStep::Promote(spare)]
            } else {
                vec![
                    MemberStep::Promote(spare),
                    MemberStep::Remove(pick(&mut self.rng)),
                ]
            }
        } else if r.is_voter(spare) {
            if voters.len() <= 3 || removable.is_empty() {
                return;
            }
            vec![MemberStep::Remove(pick(&mut self.rng))]
        } else if !self.removed.contains(&(spare as usize - 1)) {
            vec![MemberStep::AddLearner(spare)]
        } else {
            return;
        };
        let context = rdb_proto::command::MemberContext {
            added: vec![rdb_proto::command::MemberRecord {
                id: spare,
                peer_addr: format!("sim:{spare}"),
                client_addr: format!("sim:{spare}"),
                removed: false,
                store_id: 0,
            }],
        };
        let id = self.next_request;
        self.next_request += 1;
        if let Some(core) = &mut self.nodes[l].core {
            core.change_membership(id, &steps, prost::Message::encode_to_vec(&context));
        }
        self.note(format!("n{} proposes membership change {steps:?}", l + 1));
    }

    pub(super) fn maybe_fault(&mut self) {
        if !self.rng.gen_ratio(1, self.sc.fault_every.max(1) as u32) {
            return;
        }
        if self.sc.membership && self.rng.gen_ratio(1, 5) {
            self.change_membership();
            return;
        }
        let n = self.nodes.len();
        let target = match self.leader() {
            Some(l) if self.rng.gen_bool(0.6) => l,
            _ => self.rng.gen_range(0..n),
        };
        match self.rng.gen_range(0..100) {
            0..=24 => {
                if self.nodes[target].core.is_some() {
                    let after = self.rng.gen_range(5..80) * STEPS_PER_TICK;
                    self.crash(target, after);
                }
            }
            25..=34 => {
                // Power loss: every node at once, each losing a random tail of unsynced writes.
                self.note("power loss on every node".into());
                for i in 0..n {
                    if self.nodes[i].core.is_some() {
                        let after = self.rng.gen_range(1..40) * STEPS_PER_TICK;
                        self.crash(i, after);
                    }
                }
            }
            35..=59 => {
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
                    "partition {group:?} from the rest until step {}",
                    self.heal_at
                ));
            }
            60..=69 => {
                // A handover: the leader gives way to another voter at once.
                if let Some(l) = self.leader() {
                    let to = (l + 1 + self.rng.gen_range(0..n - 1)) % n;
                    if let Some(core) = &mut self.nodes[l].core {
                        let started = core.transfer_leader(to as u64 + 1).is_ok();
                        self.note(format!(
                            "leader n{} hands over to n{} ({})",
                            l + 1,
                            to + 1,
                            if started { "started" } else { "refused" }
                        ));
                    }
                }
            }
            70..=84 => {
                let until = self.now + self.rng.gen_range(10..80) * STEPS_PER_TICK;
                self.nodes[target].paused_until = until;
                self.note(format!("pause n{} until step {until}", target + 1));
            }
            _ => {
                let until = self.now + self.rng.gen_range(20..120) * STEPS_PER_TICK;
                self.nodes[target].slow_until = until;
                self.note(format!("slow clock on n{} until step {until}", target + 1));
            }
        }
    }

    pub(super) fn crash(&mut self, i: usize, restart_after: u64) {
        let unsynced = self.nodes[i].disk.unsynced_writes();
        let keep = self.rng.gen_range(0..=unsynced);
        self.nodes[i].disk.crash(keep);
        let n = &mut self.nodes[i];
        n.core = None;
        n.inbox.clear();
        n.requests.clear();
        n.paused_until = 0;
        n.slow_until = 0;
        n.restart_at = Some(self.now + restart_after);
        self.note(format!(
            "crash n{} (kept {keep} of {unsynced} unsynced writes), restart at step {}",
            i + 1,
            self.now + restart_after
        ));
    }
}
