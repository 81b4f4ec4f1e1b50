//! The faults a run injects: crashes, power loss, partitions, pauses and slow clocks.

use rand::Rng;

use super::{World, STEPS_PER_TICK};

impl World {
    pub(super) fn heal(&mut self) {
        self.healing = true;
        self.cut.clear();
        self.note("heal everything: links, pauses, clocks; restart crashed nodes".into());
        for n in &mut self.nodes {
            n.paused_until = 0;
            n.slow_until = 0;
            if n.core.is_none() {
                n.restart_at = Some(0);
            }
        }
    }

    pub(super) fn maybe_fault(&mut self) {
        if !self.rng.gen_ratio(1, self.sc.fault_every.max(1) as u32) {
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
