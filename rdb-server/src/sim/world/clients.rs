//! The simulated clients: one operation at a time each, routed by region and retried the way
//! `rdb-client` does.
//!
//! An attempt goes to the client's current store, for the region that store says holds the
//! key, at that region's epoch there (a client's region cache, refreshed from the store it
//! asks). A write carries a request id (client id, seq) and every attempt of it the same one,
//! so a retry whose first attempt applied is answered from its dedup record, wherever a split
//! or a move took the key meanwhile, as long as the retry stays within the dedup window.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use rdb_proto::command::{command::Op as CmdOp, condition::Check, Cas, Command, Delete, Put};
use rdb_storage::region;
use rdb_storage::CommandResult;

use super::{store_index, Envelope, Rep, Req, World, STEPS_PER_TICK};
use crate::raft_core::Refusal;
use crate::sim::linearizability::{
    Condition, KeyMeta, Op, Operation, Outcome, Seen, VersionedOperation,
};

pub(super) struct Pending {
    pub(super) op: Op,
    /// For a conditional CAS or delete: the versions the key must have.
    pub(super) condition: Option<Condition>,
    pub(super) seq: u64,
    pub(super) cmd: Option<Command>,
    pub(super) invoke: u64,
    pub(super) attempt: u64,
    pub(super) sent_at: u64,
    pub(super) retry_at: Option<u64>,
    /// A write some attempt of which may have been proposed.
    pub(super) maybe_applied: bool,
    /// Each region's highest commit index when the op began: no attempt lands at or below it.
    pub(super) floors: BTreeMap<u64, u64>,
    /// Regions attempts went to.
    pub(super) regions: BTreeSet<u64>,
    pub(super) deadline: u64,
}

pub(super) struct Client {
    /// Index of the store the next attempt goes to.
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
                let (op, condition) = match &mut self.clients[c].script {
                    Some(script) => {
                        if script.is_empty() {
                            continue;
                        }
                        (script.remove(0), None)
                    }
                    None if new_ops => self.random_op(c),
                    None => continue,
                };
                self.begin(c, op, condition);
                continue;
            }
            let (sent_at, retry_at) = self.clients[c]
                .pending
                .as_ref()
                .map_or((0, None), |p| (p.sent_at, p.retry_at));
            if let Some(at) = retry_at {
                if at <= self.now {
                    self.send_attempt(c);
                }
            } else if self.now > sent_at + self.attempt_timeout() {
                if let Some(p) = &mut self.clients[c].pending {
                    p.maybe_applied |= p.cmd.is_some();
                }
                self.clients[c].target = self.rng.gen_range(0..self.nodes.len());
                self.send_attempt(c);
            }
        }
    }

    /// A random operation of client `c`, with its condition on versions if it has one. Every
    /// draw past those made before conditional writes existed is made only in scenarios with
    /// `conditional_writes`, so the others replay as they did.
    pub(super) fn random_op(&mut self, c: usize) -> (Op, Option<Condition>) {
        let key = format!("k{}", self.rng.gen_range(0..self.sc.keys));
        let value = format!("c{c}-{}", self.clients[c].next_seq);
        let kind = self.rng.gen_range(0..10);
        if self.sc.conditional_writes && kind >= 6 {
            // A third of deletes and CASes as they were, a third by version, a third by
            // mod_revision.
            let (version, mod_revision) = self.recent_versions(&key);
            let condition = match self.rng.gen_range(0..3) {
                0 => None,
                1 => Some(Condition::Version(version)),
                _ => Some(Condition::ModRevision(mod_revision)),
            };
            if condition.is_some() {
                let op = match kind {
                    6 => Op::Delete { key },
                    _ => Op::Cas {
                        key,
                        expected: None,
                        new: value,
                    },
                };
                return (op, condition);
            }
        }
        let op = match kind {
            0..=3 => Op::Get { key },
            4..=5 => Op::Put { key, value },
            6 => Op::Delete { key },
            _ => {
                // Expect a value someone wrote lately, or absence: most swaps succeed, and
                // one applied twice answers "not swapped" while its value is there to read.
                let expected = self
                    .history
                    .iter()
                    .rev()
                    .take(8)
                    .filter(|o| o.call.op.key() == key)
                    .find_map(|o| match (&o.call.op, &o.call.outcome) {
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
        };
        (op, None)
    }

    /// The version and mod_revision of `key` as the latest answers said (0, 0: absent, or
    /// nothing said lately): a condition on them mostly holds, unless another client's
    /// write came between, and one applied twice would find it no longer holds.
    fn recent_versions(&self, key: &str) -> (u64, u64) {
        let recent = || {
            self.history
                .iter()
                .rev()
                .take(8)
                .filter(move |v| v.call.op.key() == key)
        };
        let meta = |v: &VersionedOperation| match (&v.call.outcome, v.seen) {
            (Outcome::Get(_), Some(s)) => Some(s.meta),
            (Outcome::Cas(false) | Outcome::Refused, Some(s)) if s.meta.is_some() => Some(s.meta),
            _ => None,
        };
        let version = recent()
            .find_map(meta)
            .map_or(0, |m| m.map_or(0, |m| m.version));
        let mod_revision = recent()
            .find_map(|v| match (&v.call.outcome, v.seen) {
                (Outcome::Put | Outcome::Cas(true), Some(s)) => Some(s.revision),
                (Outcome::Delete, Some(_)) => Some(0),
                _ => meta(v).map(|m| m.map_or(0, |m| m.mod_revision)),
            })
            .unwrap_or(0);
        (version, mod_revision)
    }

    pub(super) fn begin(&mut self, c: usize, op: Op, condition: Option<Condition>) {
        let seq = self.clients[c].next_seq;
        self.clients[c].next_seq += 1;
        let cond = condition.map(|c| rdb_proto::command::Condition {
            check: Some(match c {
                Condition::Version(v) => Check::Version(v),
                Condition::ModRevision(r) => Check::ModRevision(r),
            }),
        });
        let cmd_op = match &op {
            Op::Get { .. } => None,
            Op::Put { key, value } => Some(CmdOp::Put(Put {
                key: key.clone().into_bytes(),
                value: value.clone().into_bytes(),
            })),
            Op::Delete { key } => Some(CmdOp::Delete(Delete {
                key: key.clone().into_bytes(),
                condition: cond,
            })),
            Op::Cas { key, expected, new } => Some(CmdOp::Cas(Cas {
                key: key.clone().into_bytes(),
                expected: expected.clone().map(String::into_bytes),
                new_value: new.clone().into_bytes(),
                condition: cond,
            })),
        };
        let cmd = cmd_op.map(|o| Command {
            client_id: c as u64 + 1,
            seq,
            op: Some(o),
            stamp: 0,
        });
        let deadline = self.now + 60 * STEPS_PER_TICK;
        let floors = self
            .region_indexes()
            .into_iter()
            .map(|(id, (commit, _))| (id, commit))
            .collect();
        self.clients[c].pending = Some(Pending {
            op,
            condition,
            seq,
            cmd,
            invoke: self.now,
            attempt: 0,
            sent_at: self.now,
            retry_at: None,
            maybe_applied: false,
            floors,
            regions: BTreeSet::new(),
            deadline,
        });
        self.send_attempt(c);
    }

    /// Whether a write that may have applied can be sent again to region `target`, so that
    /// if it did apply, the retry still finds its request id's record: wherever the first
    /// apply was (a region attempts went to), wherever a split copied the record (a region
    /// made since the operation began) and wherever the retry lands, the retry's entry must
    /// come within the window of where the record could be. A real client bounds its retries
    /// by time to the same end; past the window a retry applies again, as documented.
    fn within_window(&self, p: &Pending, target: u64) -> bool {
        let margin = 8 * self.clients.len() as u64 + 16;
        self.region_indexes().iter().all(|(id, &(_, last))| {
            let floor = p.floors.get(id).copied();
            let concerned = *id == target || p.regions.contains(id) || floor.is_none();
            !concerned || last + margin <= floor.unwrap_or(0) + self.sc.dedup_window
        })
    }

    /// Sends the next attempt of client `c`'s operation to its target store, or gives the
    /// operation up (past its deadline, or a write past its window).
    pub(super) fn send_attempt(&mut self, c: usize) {
        let target = self.clients[c].target;
        let now = self.now;
        let Some(p) = self.clients[c].pending.as_ref() else {
            return;
        };
        if now >= p.deadline {
            return self.give_up(c);
        }
        let key = p.op.key().to_string();
        let routed = self.nodes[target]
            .store
            .as_ref()
            .and_then(|s| s.region_for_key(key.as_bytes()).cloned());
        let Some(region) = routed else {
            // The store is down or has no region for the key: ask another soon.
            self.clients[c].target = self.rng.gen_range(0..self.nodes.len());
            if let Some(p) = self.clients[c].pending.as_mut() {
                p.retry_at = Some(now + STEPS_PER_TICK);
            }
            return;
        };
        if p.maybe_applied && !self.within_window(p, region.id) {
            return self.give_up(c);
        }
        if p.maybe_applied {
            let span = self
                .region_indexes()
                .get(&region.id)
                .map_or(0, |&(_, last)| {
                    last.saturating_sub(p.floors.get(&region.id).copied().unwrap_or(0))
                });
            if span * 2 > self.sc.dedup_window {
                self.stats.late_retries += 1;
            }
            if !p.regions.contains(&region.id) {
                self.stats.moved_retries += 1;
            }
        }
        let fresh_id = self.sc.planted.retries_with_new_ids && p.attempt > 0;
        let seq = if fresh_id {
            let s = self.clients[c].next_seq;
            self.clients[c].next_seq += 1;
            Some(s)
        } else {
            None
        };
        let Some(p) = self.clients[c].pending.as_mut() else {
            return;
        };
        p.attempt += 1;
        p.sent_at = now;
        p.retry_at = None;
        p.regions.insert(region.id);
        let mut write = p.cmd.clone();
        if let (Some(cmd), Some(seq)) = (&mut write, seq) {
            cmd.seq = seq;
        }
        let req = Req {
            region: region.id,
            epoch: region::epoch(&region),
            key,
            write,
        };
        let attempt = (p.seq, p.attempt);
        let delay = self.rng.gen_range(1..=self.sc.max_delay);
        self.post(
            delay,
            Envelope::Request {
                store: target,
                client: c,
                attempt,
                req,
            },
        );
    }

    /// Client `c` stops trying: its operation failed, or may have applied.
    fn give_up(&mut self, c: usize) {
        let Some(p) = self.clients[c].pending.take() else {
            return;
        };
        let outcome = if p.maybe_applied {
            Outcome::Indeterminate
        } else {
            Outcome::Failed
        };
        self.finish(c, p, outcome, None);
    }

    /// Records client `c`'s operation `p` as done, with what its answer said of revisions.
    pub(super) fn finish(&mut self, c: usize, p: Pending, outcome: Outcome, seen: Option<Seen>) {
        if !matches!(outcome, Outcome::Failed | Outcome::Indeterminate) {
            self.stats.ok += 1;
        }
        self.history.push(VersionedOperation {
            call: Operation {
                client: c as u64,
                op: p.op,
                outcome,
                invoke: p.invoke * 1_000_000,
                complete: self.now * 1_000_000,
            },
            condition: p.condition,
            seen,
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
        let seen = |revision, meta: Option<rdb_storage::mvcc::Meta>| Seen {
            revision,
            meta: meta.map(|m| KeyMeta {
                create_revision: m.create_revision,
                mod_revision: m.mod_revision,
                version: m.version,
            }),
        };
        let outcome = match (&rep, &p.op) {
            (Rep::Written(CommandResult::Put { revision }), Op::Put { .. }) => {
                Some((Outcome::Put, seen(*revision, None)))
            }
            (Rep::Written(CommandResult::Delete { revision, .. }), Op::Delete { .. }) => {
                Some((Outcome::Delete, seen(*revision, None)))
            }
            (
                Rep::Written(CommandResult::DeleteRefused { current, revision }),
                Op::Delete { .. },
            ) if p.condition.is_some() => Some((Outcome::Refused, seen(*revision, *current))),
            (
                Rep::Written(CommandResult::Cas {
                    succeeded,
                    revision,
                    current_meta,
                    ..
                }),
                Op::Cas { .. },
            ) => {
                // A swap's answer has no versions; a failed one's are the key's, when given.
                let current = current_meta.filter(|_| !succeeded);
                Some((Outcome::Cas(*succeeded), seen(*revision, current)))
            }
            (Rep::Read { value, revision }, Op::Get { .. }) => {
                let (value, meta) = value.clone().unzip();
                Some((
                    Outcome::Get(value),
                    Seen {
                        revision: *revision,
                        meta,
                    },
                ))
            }
            _ => None,
        };
        if let Some((outcome, seen)) = outcome {
            if let Some(p) = self.clients[c].pending.take() {
                let changed = match (&rep, &p.op) {
                    (Rep::Written(CommandResult::Put { revision }), Op::Put { key, .. })
                    | (
                        Rep::Written(CommandResult::Delete {
                            existed: true,
                            revision,
                        }),
                        Op::Delete { key },
                    )
                    | (
                        Rep::Written(CommandResult::Cas {
                            succeeded: true,
                            revision,
                            ..
                        }),
                        Op::Cas { key, .. },
                    ) => Some((key.clone(), *revision)),
                    _ => None,
                };
                if let Some((key, revision)) = changed {
                    self.written
                        .push((key, p.invoke * 1_000_000, self.now * 1_000_000, revision));
                }
                self.finish(c, p, outcome, Some(seen));
            }
            return;
        }
        if !current {
            // A late refusal may still say a write was proposed.
            if matches!(rep, Rep::Refused(Refusal::Indeterminate(_))) {
                if let Some(p) = self.clients[c].pending.as_mut() {
                    p.maybe_applied |= p.cmd.is_some();
                }
            }
            return;
        }
        let backoff = self.now + self.rng.gen_range(1..=2) * STEPS_PER_TICK;
        let hop = self.rng.gen_range(0..self.nodes.len());
        let Some(p) = self.clients[c].pending.as_mut() else {
            return;
        };
        match rep {
            Rep::NotLeader(Some(store)) => {
                self.clients[c].target = store_index(store);
                self.send_attempt(c);
            }
            Rep::NotLeader(None) | Rep::Refused(Refusal::Unavailable(_)) | Rep::Region => {
                p.retry_at = Some(backoff);
                self.clients[c].target = hop;
            }
            Rep::Refused(Refusal::Indeterminate(_)) => {
                p.maybe_applied = true;
                p.retry_at = Some(backoff);
                self.clients[c].target = hop;
            }
            // A split took the key between the proposal and its apply, or the region prepared
            // a merge: nothing applied.
            Rep::Refused(Refusal::Rejected(e))
                if e.starts_with("key not in region") || e.starts_with("region merging") =>
            {
                p.retry_at = Some(backoff);
                self.clients[c].target = hop;
            }
            Rep::Refused(Refusal::Rejected(e)) => panic!("a valid command was rejected: {e}"),
            other => panic!("reply {other:?} does not fit {:?}", p.op),
        }
    }
}
