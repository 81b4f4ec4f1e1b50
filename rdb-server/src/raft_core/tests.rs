//! The core on three in-memory replicas driven tick by tick: log compaction against follower
//! progress, and how client requests are answered.

use prost::Message as _;
use raft::prelude::{Message, MessageType};
use rdb_proto::command::{command::Op, Command, Put};
use rdb_storage::CommandResult;

use super::mem::{MemDisk, MemKv, MemLog};
use super::{Answer, Core, CoreConfig, Refusal, ReplicaConfig, RequestId};

type MemCore = Core<MemLog, MemKv>;

struct Group {
    cores: Vec<MemCore>,
    net: Vec<Message>,
    replies: Vec<(RequestId, Result<Answer<CommandResult>, Refusal>)>,
}

fn config(id: u64, max_retained_log_entries: u64) -> CoreConfig {
    CoreConfig {
        replica: ReplicaConfig {
            id,
            election_ticks: 10,
            heartbeat_ticks: 1,
            fixed_election_timeout: Some(10 + id as usize),
            snapshot_threshold: 20,
            catch_up_entries: 5,
            retained_log_cap: max_retained_log_entries,
        },
        read_retry_ticks: 4,
        planted: Default::default(),
    }
}

fn put(i: usize) -> Vec<u8> {
    Command {
        client_id: 0,
        seq: 0,
        op: Some(Op::Put(Put {
            key: format!("k{i}").into(),
            value: b"v".to_vec(),
        })),
    }
    .encode_to_vec()
}

impl Group {
    fn new(max_retained_log_entries: u64) -> Group {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let cores = (1..=3)
            .map(|id| {
                let disk = MemDisk::bootstrap(&[1, 2, 3]);
                let store = MemLog::open(disk.clone());
                let app = MemKv::open(disk, 1000);
                Core::new(&config(id, max_retained_log_entries), store, app, &logger).unwrap()
            })
            .collect();
        Group {
            cores,
            net: Vec::new(),
            replies: Vec::new(),
        }
    }

    /// Runs turns and delivers messages until the group is quiet; `cut` drops some.
    fn pump(&mut self, cut: &dyn Fn(&Message) -> bool) {
        loop {
            for c in &mut self.cores {
                let out = c.advance(&mut self.net).unwrap();
                self.replies.extend(out.replies);
            }
            let msgs = std::mem::take(&mut self.net);
            if msgs.is_empty() {
                return;
            }
            for m in msgs.into_iter().filter(|m| !cut(m)) {
                let to = m.to as usize - 1;
                self.cores[to].step(m);
            }
        }
    }

    fn tick(&mut self, cut: &dyn Fn(&Message) -> bool) {
        for c in &mut self.cores {
            c.tick();
        }
        self.pump(cut);
    }

    fn leader(&mut self) -> usize {
        for _ in 0..500 {
            if let Some(i) = self.cores.iter().position(|c| c.replica().is_leader()) {
                return i;
            }
            self.tick(&|_| false);
        }
        panic!("no leader elected");
    }

    /// Proposes `n` puts on the leader, ticking between them.
    fn write(&mut self, leader: usize, n: usize, cut: &dyn Fn(&Message) -> bool) {
        for i in 0..n {
            self.cores[leader].propose(i as u64, put(i));
            self.pump(cut);
            self.tick(cut);
        }
    }

    fn matched(&self, leader: usize, id: u64) -> u64 {
        self.cores[leader].replica().matched(id).unwrap()
    }

    fn first_index(&self, leader: usize) -> u64 {
        self.cores[leader].replica().log_bounds().0
    }

    fn reply(&mut self, id: RequestId) -> Option<Result<Answer<CommandResult>, Refusal>> {
        let i = self.replies.iter().position(|(r, _)| *r == id)?;
        Some(self.replies.remove(i).1)
    }
}

/// Cuts appends to `f`: it stays live (heartbeats flow) but falls behind.
fn appends_to(f: u64) -> impl Fn(&Message) -> bool {
    move |m| m.to == f && m.get_msg_type() == MessageType::MsgAppend
}

/// Cuts every message to and from `f`: it looks dead.
fn all_of(f: u64) -> impl Fn(&Message) -> bool {
    move |m| m.to == f || m.from == f
}

#[test]
fn the_leader_keeps_the_log_a_live_follower_needs_but_not_for_a_dead_one() {
    let mut g = Group::new(1000);
    let l = g.leader();
    let f = (l as u64 + 1) % 3 + 1;
    g.write(l, 5, &|_| false);
    let lag = appends_to(f);
    g.write(l, 60, &lag);
    let have = g.matched(l, f);
    assert!(
        g.cores[l].replica().applied_index() > have + 40,
        "the follower lags"
    );
    assert!(
        g.first_index(l) <= have + 1,
        "compacted past a live follower: first index {}, follower matched {have}",
        g.first_index(l)
    );
    // Once it is gone for longer than an election timeout, it no longer holds the log.
    let dead = all_of(f);
    for _ in 0..15 {
        g.tick(&dead);
    }
    g.write(l, 30, &dead);
    assert!(
        g.first_index(l) > have + 1,
        "a dead follower still holds the log at {}",
        g.first_index(l)
    );
    let applied = g.cores[l].replica().applied_index();
    assert!(applied - g.first_index(l) < 25, "compacted as usual");
}

#[test]
fn past_the_retained_log_cap_the_leader_compacts_for_no_one() {
    let mut g = Group::new(30);
    let l = g.leader();
    let f = (l as u64 + 1) % 3 + 1;
    g.write(l, 5, &|_| false);
    let lag = appends_to(f);
    g.write(l, 80, &lag);
    let have = g.matched(l, f);
    let (first, last) = g.cores[l].replica().log_bounds();
    assert!(
        first > have + 1,
        "the cap let a live follower hold the log: first {first}, matched {have}"
    );
    assert!(
        last - first <= 31,
        "log bounded by the cap: {first}..{last}"
    );
}

#[test]
fn a_write_is_answered_once_applied_and_a_follower_points_to_the_leader() {
    let mut g = Group::new(1000);
    let l = g.leader();
    g.cores[l].propose(7, put(1));
    g.pump(&|_| false);
    assert_eq!(g.reply(7), Some(Ok(Answer::Written(CommandResult::Put))));
    let f = (l + 1) % 3;
    g.cores[f].propose(8, put(2));
    g.cores[f].read(9);
    g.pump(&|_| false);
    let leader = l as u64 + 1;
    assert_eq!(g.reply(8), Some(Err(Refusal::NotLeader { leader })));
    assert_eq!(g.reply(9), Some(Err(Refusal::NotLeader { leader })));
}

#[test]
fn a_read_waits_for_a_quorum_round_and_fails_when_leadership_is_lost() {
    let mut g = Group::new(1000);
    let l = g.leader();
    let me = l as u64 + 1;
    // Cut off from both followers, the leader cannot confirm it still leads.
    let isolated = move |m: &Message| m.from == me || m.to == me;
    g.cores[l].read(1);
    g.pump(&isolated);
    assert_eq!(g.reply(1), None, "answered without a quorum round");
    for _ in 0..40 {
        g.tick(&isolated);
    }
    match g.reply(1) {
        Some(Err(Refusal::NotLeader { .. } | Refusal::Unavailable(_))) => {}
        other => panic!("a read on a deposed leader ended with {other:?}"),
    }
    // Healed: a read on the (new) leader is answered.
    let l = g.leader();
    g.cores[l].read(2);
    g.pump(&|_| false);
    let term = g.cores[l].replica().term();
    assert_eq!(g.reply(2), Some(Ok(Answer::ReadReady { term })));
}

#[test]
fn a_write_in_flight_when_leadership_is_lost_is_indeterminate_never_a_success() {
    let mut g = Group::new(1000);
    let l = g.leader();
    let me = l as u64 + 1;
    let isolated = move |m: &Message| m.from == me || m.to == me;
    g.cores[l].propose(1, put(1));
    g.pump(&isolated);
    for _ in 0..40 {
        g.tick(&isolated);
    }
    assert_eq!(
        g.reply(1),
        Some(Err(Refusal::Indeterminate(
            "leadership changed before the write committed"
        )))
    );
}

#[test]
fn leadership_moves_to_the_voter_it_is_handed_to_and_only_a_leader_can_hand_it() {
    let mut g = Group::new(1000);
    let l = g.leader();
    let to = (l + 1) % 3;
    let f = (l + 2) % 3;
    assert!(matches!(
        g.cores[f].transfer_leader(to as u64 + 1),
        Err(Refusal::NotLeader { .. })
    ));
    assert!(matches!(
        g.cores[l].transfer_leader(l as u64 + 1),
        Err(Refusal::Rejected(_))
    ));
    assert!(matches!(
        g.cores[l].transfer_leader(9),
        Err(Refusal::Rejected(_))
    ));
    g.cores[l].transfer_leader(to as u64 + 1).unwrap();
    g.pump(&|_| false);
    assert!(
        g.cores[to].replica().is_leader(),
        "no election timeout needed"
    );
    assert!(!g.cores[l].replica().is_leader());
}
