//! The simulated network: envelopes (Raft messages, client requests and replies) posted with a
//! random delay and delivered in order of arrival time, Raft messages lost across a cut or at
//! random and sometimes duplicated, and a snapshot's file copied between the stores' folders
//! as the transport does.

use std::cmp::Reverse;

use raft::prelude::MessageType;
use rand::Rng;

use super::{store_index, Envelope, Input, Rep, World, STEPS_PER_TICK};
use crate::store::RegionMessage;

impl World {
    /// Posts an envelope that arrives `delay` steps from now.
    pub(super) fn post(&mut self, delay: u64, e: Envelope) {
        let id = self.next_envelope;
        self.next_envelope += 1;
        self.in_flight.insert(id, e);
        self.net.push(Reverse((self.now + delay, id as u64, id)));
    }

    /// Sends a Raft message: lost across a cut or at random (its sender hears the store is
    /// unreachable, and a snapshot's failure), else posted once or, at random, twice.
    pub(super) fn send_raft(&mut self, m: RegionMessage) {
        let (from, to) = (store_index(m.from_store), store_index(m.to_store));
        let lost = self.cut.contains(&(from, to))
            || (!self.healing && self.rng.gen_ratio(self.sc.drop_per_mille, 1000));
        if lost {
            if m.msg.get_msg_type() == MessageType::MsgSnapshot {
                self.nodes[from].inbox.push(Input::SnapshotReport {
                    region: m.region_id,
                    to: m.msg.to,
                    ok: false,
                });
            }
            self.nodes[from]
                .inbox
                .push(Input::Unreachable { store: m.to_store });
            return;
        }
        let copies = if !self.healing && self.rng.gen_ratio(self.sc.dup_per_mille, 1000) {
            2
        } else {
            1
        };
        let lagging = self.nodes[to].appends_lag_until > self.now
            && m.msg.get_msg_type() == MessageType::MsgAppend;
        for _ in 0..copies {
            let mut delay = self.rng.gen_range(1..=self.sc.max_delay);
            if lagging {
                delay += self.rng.gen_range(5..=20) * STEPS_PER_TICK;
            }
            self.post(delay, Envelope::Raft(m.clone()));
        }
    }

    /// Copies the file of a snapshot message from the sender's folder to the receiver's, as
    /// the transport and the peer service do; false if the file is gone.
    pub(super) fn copy_snapshot(&self, m: &RegionMessage) -> bool {
        let Ok(desc) =
            rdb_storage::snapshot::SnapshotDescriptor::decode(&m.msg.get_snapshot().data)
        else {
            return false;
        };
        let snap_dir = |i: usize| rdb_storage::engine::snap_dir(self.nodes[i].disk.path());
        let src =
            crate::transport::region_snap_dir(&snap_dir(store_index(m.from_store)), m.region_id);
        let dst =
            crate::transport::region_snap_dir(&snap_dir(store_index(m.to_store)), m.region_id);
        std::fs::create_dir_all(&dst).is_ok()
            && std::fs::copy(desc.path_in(&src), desc.path_in(&dst)).is_ok()
    }

    /// Delivers every envelope due by now: a Raft message or request to its store's inbox (if
    /// the store runs and, for a message, no cut lies between), a reply to its client.
    pub(super) fn deliver(&mut self) {
        let mut due = Vec::new();
        while let Some(Reverse((at, _, id))) = self.net.peek().copied() {
            if at > self.now {
                break;
            }
            self.net.pop();
            if let Some(e) = self.in_flight.remove(&id) {
                due.push(e);
            }
        }
        for e in due {
            match e {
                Envelope::Raft(m) => {
                    let (from, to) = (store_index(m.from_store), store_index(m.to_store));
                    let mut ok = self.nodes[to].store.is_some() && !self.cut.contains(&(from, to));
                    if m.msg.get_msg_type() == MessageType::MsgSnapshot {
                        ok = ok && self.copy_snapshot(&m);
                        self.stats.snapshots += usize::from(ok);
                        if self.nodes[from].store.is_some() {
                            self.nodes[from].inbox.push(Input::SnapshotReport {
                                region: m.region_id,
                                to: m.msg.to,
                                ok,
                            });
                        }
                    }
                    if ok {
                        self.nodes[to].inbox.push(Input::Raft(m));
                    }
                }
                Envelope::Request {
                    store,
                    client,
                    attempt,
                    req,
                } => {
                    if self.nodes[store].store.is_some() {
                        self.nodes[store].inbox.push(Input::Request {
                            client,
                            attempt,
                            req,
                        });
                    }
                }
                Envelope::Reply {
                    client,
                    attempt,
                    rep,
                } => self.on_reply(client, attempt, rep),
            }
        }
    }

    /// Posts a reply to a client's attempt, with a random delay.
    pub(super) fn reply(&mut self, client: usize, attempt: (u64, u64), rep: Rep) {
        let delay = self.rng.gen_range(1..=self.sc.max_delay);
        self.post(
            delay,
            Envelope::Reply {
                client,
                attempt,
                rep,
            },
        );
    }
}
