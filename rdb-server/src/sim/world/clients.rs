//! The simulated clients: one operation at a time each, retried the way `rdb-client` does.

use rand::Rng;
use rdb_proto::command::{command::Op as CmdOp, Cas, Command, Delete, Put};
use rdb_storage::CommandResult;

use super::{node_index, Envelope, Rep, Req, World, STEPS_PER_TICK};
use crate::raft_core::Refusal;
use crate::sim::linearizability::{Op, Operation, Outcome};

pub(super) struct Pending {
    pub(super) op: Op,
    pub(super) seq: u64,
    pub(super) cmd: Option<Command>,
    pub(super) invoke: u64,
    pub(super) attempt: u64,
    pub(super) sent_at: u64,
    pub(super) retry_at: Option<u64>,
    /// A write some attempt of which may have been proposed.
    pub(super) maybe_applied: bool,
    /// The highest commit index when the op began: no attempt can land at or below it.
    pub(super) commit_floor: u64,
    pub(super) deadline: u64,
}

pub(super) struct Client {
    pub(super) target: usize,
    pub(super) pending: Option<Pending>,
    pub(super) next_seq: u64,
    pub(super) idle_until: u64,
    /// Operations still to issue at the end (the final reads), or None for random work.
    pub(super) script: Option<Vec<Op>>,
}

impl World {
    /// Steps a request may wait for its reply before the client gives up on that attempt.
    pub(super) fn attempt_timeout(&self) -> u64 {
        6 * self.sc.max_delay + 4 * STEPS_PER_TICK
    }

    pub(super) fn drive_clients(&mut self, new_ops: bool) {
        for c in 0..self.clients.len() {
            if self.clients[c].pending.is_none() {
                if self.clients[c].idle_until > self.now {
                    continue;
                }
                let op = match &mut self.clients[c].script {
                    Some(script) => {
                        if script.is_empty() {
                            continue;
                        }
                        script.remove(0)
                    }
                    None if new_ops => self.random_op(c),
                    None => continue,
                };
                self.begin(c, op);
                continue;
            }
            let (sent_at, retry_at) = {
                let p = self.clients[c]
                    .pending
                    .as_ref()
                    .map(|p| (p.sent_at, p.retry_at));
                p.unwrap_or((0, None))
            };
            if let Some(at) = retry_at {
                if at <= self.now {
                    self.retry(c);
                }
            } else if self.now > sent_at + self.attempt_timeout() {
                if let Some(p) = &mut self.clients[c].pending {
                    p.maybe_applied |= p.cmd.is_some();
                }
                self.clients[c].target = self.rng.gen_range(0..self.nodes.len());
                self.retry(c);
            }
        }
    }

    pub(super) fn random_op(&mut self, c: usize) -> Op {
        let key = format!("k{}", self.rng.gen_range(0..self.sc.keys));
        let value = format!("c{c}-{}", self.clients[c].next_seq);
        match self.rng.gen_range(0..10) {
            0..=3 => Op::Get { key },
            4..=5 => Op::Put { key, value },
            6 => Op::Delete { key },
            _ => {
                // Expect a value someone wrote lately, or absence.
                let expected = self
                    .history
                    .iter()
                    .rev()
                    .take(8)
                    .filter(|o| o.op.key() == key)
                    .find_map(|o| match (&o.op, &o.outcome) {
                        (Op::Put { value, .. }, _) => Some(value.clone()),
                        (Op::Cas { new, .. }, _) => Some(new.clone()),
                        (_, Outcome::Get(v)) => v.clone(),
                        _ => None,
                    });
                Op::Cas {
                    key,
                    expected,
                    new: value,
                }
            }
        }
    }

    pub(super) fn begin(&mut self, c: usize, op: Op) {
        let seq = self.clients[c].next_seq;
        self.clients[c].next_seq += 1;
        let cmd_op = match &op {
            Op::Get { .. } => None,
            Op::Put { key, value } => Some(CmdOp::Put(Put {
                key: key.clone().into_bytes(),
                value: value.clone().into_bytes(),
            })),
            Op::Delete { key } => Some(CmdOp::Delete(Delete {
                key: key.clone().into_bytes(),
            })),
            Op::Cas { key, expected, new } => Some(CmdOp::Cas(Cas {
                key: key.clone().into_bytes(),
                expected: expected.clone().map(String::into_bytes),
                new_value: new.clone().into_bytes(),
            })),
        };
        let cmd = cmd_op.map(|o| Command {
            client_id: c as u64 + 1,
            seq,
            op: Some(o),
        });
        let deadline = self.now + 60 * STEPS_PER_TICK;
        let commit_floor = self.max_commit();
        self.clients[c].pending = Some(Pending {
            op,
            seq,
            cmd,
            invoke: self.now,
            attempt: 0,
            sent_at: self.now,
            retry_at: None,
            maybe_applied: false,
            commit_floor,
            deadline,
        });
        self.send_attempt(c);
    }

    pub(super) fn send_attempt(&mut self, c: usize) {
        let target = self.clients[c].target;
        let now = self.now;
        let Some(p) = &mut self.clients[c].pending else {
            return;
        };
        p.attempt += 1;
        p.sent_at = now;
        p.retry_at = None;
        let req = match (&p.cmd, &p.op) {
            (Some(cmd), _) => Req::Write(cmd.clone()),
            (None, op) => Req::Read(op.key().to_string()),
        };
        let attempt = (p.seq, p.attempt);
        let delay = self.rng.gen_range(1..=self.sc.max_delay);
        self.post(
            delay,
            Envelope::Request {
                node: target,
                client: c,
                attempt,
                req,
            },
        );
    }

    /// Whether another attempt is allowed: before the deadline, and for a write that may have
    /// applied, only while any entry a retry could land at is still within the dedup window
    /// of wherever the first could have landed (a real client bounds its retries by time to
    /// the same end; past the window a retry applies again, as documented).
    pub(super) fn may_retry(&self, p: &Pending) -> bool {
        if self.now >= p.deadline {
            return false;
        }
        if !p.maybe_applied {
            return true;
        }
        let margin = 8 * self.clients.len() as u64 + 16;
        self.max_last_index() + margin <= p.commit_floor + self.sc.dedup_window
    }

    pub(super) fn retry(&mut self, c: usize) {
        let allowed = self.clients[c]
            .pending
            .as_ref()
            .is_some_and(|p| self.may_retry(p));
        if allowed {
            if let Some(p) = &self.clients[c].pending {
                let span = self.max_last_index().saturating_sub(p.commit_floor);
                if p.maybe_applied && span * 2 > self.sc.dedup_window {
                    self.stats.late_retries += 1;
                }
            }
            self.send_attempt(c);
            return;
        }
        let Some(p) = self.clients[c].pending.take() else {
            return;
        };
        let outcome = if p.maybe_applied {
            Outcome::Indeterminate
        } else {
            Outcome::Failed
        };
        self.finish(c, p, outcome);
    }

    pub(super) fn finish(&mut self, c: usize, p: Pending, outcome: Outcome) {
        if !matches!(outcome, Outcome::Failed | Outcome::Indeterminate) {
            self.stats.ok += 1;
        }
        self.history.push(Operation {
            client: c as u64,
            op: p.op,
            outcome,
            invoke: p.invoke * 1_000_000,
            complete: self.now * 1_000_000,
        });
        self.clients[c].idle_until = self.now + self.rng.gen_range(0..3 * STEPS_PER_TICK);
    }

    /// A reply to attempt `(seq, n)`: a success answers op `seq` whichever attempt it came
    /// from; a refusal matters only for the attempt the client is waiting on.
    pub(super) fn on_reply(&mut self, c: usize, (seq, attempt): (u64, u64), rep: Rep) {
        let Some(p) = self.clients[c].pending.as_ref() else {
            return;
        };
        if p.seq != seq {
            return;
        }
        let current = attempt == p.attempt && p.retry_at.is_none();
        let outcome = match (&rep, &p.op) {
            (Rep::Written(CommandResult::Put), Op::Put { .. }) => Some(Outcome::Put),
            (Rep::Written(CommandResult::Delete { .. }), Op::Delete { .. }) => {
                Some(Outcome::Delete)
            }
            (Rep::Written(CommandResult::Cas { succeeded, .. }), Op::Cas { .. }) => {
                Some(Outcome::Cas(*succeeded))
            }
            (Rep::Value(v), Op::Get { .. }) => Some(Outcome::Get(v.clone())),
            _ => None,
        };
        if let Some(outcome) = outcome {
            // A success answers the op whichever attempt it came from.
            if let Some(p) = self.clients[c].pending.take() {
                self.finish(c, p, outcome);
            }
            return;
        }
        if !current {
            return;
        }
        let backoff = self.now + self.rng.gen_range(1..=2) * STEPS_PER_TICK;
        let n = self.nodes.len();
        let hop = self.rng.gen_range(0..n);
        let Some(p) = self.clients[c].pending.as_mut() else {
            return;
        };
        match rep {
            Rep::Refused(Refusal::NotLeader { leader }) => {
                self.clients[c].target = node_index(leader);
                self.retry(c);
            }
            Rep::Refused(Refusal::Unavailable(_)) => {
                p.retry_at = Some(backoff);
                self.clients[c].target = hop;
            }
            Rep::Refused(Refusal::Indeterminate(_)) => {
                p.maybe_applied = true;
                p.retry_at = Some(backoff);
                self.clients[c].target = hop;
            }
            Rep::Refused(Refusal::Rejected(e)) => panic!("a valid command was rejected: {e}"),
            other => panic!("reply {other:?} does not fit {:?}", p.op),
        }
    }
}
