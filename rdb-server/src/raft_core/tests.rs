//! The core on three in-memory replicas driven tick by tick: log compaction against follower
//! progress, and how client requests are answered.

use prost::Message as _;
use raft::prelude::{Message, MessageType};
use rdb_proto::command::{command::Op, Command, Put};
use rdb_storage::CommandResult;

use super::mem::{MemDisk, MemKv, MemLog};
use super::{Answer, Core, CoreConfig, MemberStep, Membership, Refusal, ReplicaConfig, RequestId};

type MemCore = Core<MemLog, MemKv>;

struct Group {
    cores: Vec<MemCore>,
    disks: Vec<MemDisk>,
    net: Vec<Message>,
    replies: Vec<(RequestId, Result<Answer<CommandResult>, Refusal>)>,
    /// Ids of replicas that reported their own removal.
    removed: Vec<u64>,
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
        read_ctx_salt: id * 1000,
    }
}

fn put(i: usize) -> Vec<u8> {
    Command {
        client_id: 0,
        seq: 0,
        stamp: 0,
        op: Some(Op::Put(Put {
            key: format!("k{i}").into(),
            value: b"v".to_vec(),
        })),
    }
    .encode_to_vec()
}

impl Group {
    fn new(max_retained_log_entries: u64) -> Group {
        let mut g = Group {
            cores: Vec::new(),
            disks: Vec::new(),
            net: Vec::new(),
            replies: Vec::new(),
            removed: Vec::new(),
        };
        for _ in 1..=3 {
            g.add_replica(&[1, 2, 3], max_retained_log_entries);
        }
        g
    }

    /// Starts replica `cores.len() + 1` on a disk bootstrapped with `voters` (none: it joins).
    fn add_replica(&mut self, voters: &[u64], max_retained_log_entries: u64) {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let id = self.cores.len() as u64 + 1;
        let disk = MemDisk::bootstrap(voters);
        let store = MemLog::open(disk.clone());
        let app = MemKv::open(disk.clone(), 1000);
        let core = Core::new(&config(id, max_retained_log_entries), store, app, &logger);
        self.cores.push(core.unwrap());
        self.disks.push(disk);
    }

    /// Restarts replica `i` on its disk, as a process restart does (nothing unsynced is lost).
    fn restart(&mut self, i: usize) {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let disk = self.disks[i].clone();
        let core = Core::new(
            &config(i as u64 + 1, 1000),
            MemLog::open(disk.clone()),
            MemKv::open(disk, 1000),
            &logger,
        );
        self.cores[i] = core.unwrap();
    }

    /// Ticks until some replica leads; returns how many ticks that took.
    fn ticks_to_leader(&mut self) -> usize {
        for t in 0..500 {
            if self.cores.iter().any(|c| c.replica().is_leader()) {
                return t;
            }
            self.tick(&|_| false);
        }
        panic!("no leader elected");
    }

    /// Runs turns and delivers messages until the group is quiet; `cut` drops some.
    fn pump(&mut self, cut: &dyn Fn(&Message) -> bool) {
        loop {
            for c in &mut self.cores {
                let out = c.advance(&mut self.net).unwrap();
                self.replies.extend(out.replies);
                if out.removed {
                    self.removed.push(c.replica().id());
                }
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
    assert!(matches!(
        g.reply(7),
        Some(Ok(Answer::Written(CommandResult::Put { .. })))
    ));
    let f = (l + 1) % 3;
    g.cores[f].propose(8, put(2));
    g.pump(&|_| false);
    let leader = l as u64 + 1;
    assert_eq!(g.reply(8), Some(Err(Refusal::NotLeader { leader })));
}

#[test]
fn a_follower_serves_a_read_only_once_it_applied_what_the_leader_committed() {
    let mut g = Group::new(1000);
    let l = g.leader();
    let f = (l + 1) % 3;
    let fid = f as u64 + 1;
    // The follower misses a write the leader committed with the third node.
    let lag = appends_to(fid);
    g.cores[l].propose(1, put(1));
    g.pump(&lag);
    assert!(matches!(
        g.reply(1),
        Some(Ok(Answer::Written(CommandResult::Put { .. })))
    ));
    assert!(g.disks[f].lock().get(b"k1").is_none());
    // Its read round goes through the leader, but it waits until it has the write.
    g.cores[f].read(2);
    for _ in 0..3 {
        g.tick(&lag);
    }
    assert_eq!(
        g.reply(2),
        None,
        "a follower answered a read before applying the leader's commit"
    );
    g.tick(&|_| false);
    g.pump(&|_| false);
    assert!(matches!(g.reply(2), Some(Ok(Answer::ReadReady { .. }))));
    assert!(g.disks[f].lock().get(b"k1").is_some());
    // Cut off from the leader, a follower gives up on its read instead of waiting for ever.
    let alone = all_of(fid);
    g.cores[f].read(3);
    let mut answer = None;
    for _ in 0..200 {
        answer = g.reply(3);
        if answer.is_some() {
            break;
        }
        g.tick(&alone);
    }
    match answer {
        Some(Err(Refusal::Unavailable(_) | Refusal::NotLeader { .. })) => {}
        other => panic!("a cut-off follower's read ended with {other:?}"),
    }
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

/// The context of a change adding `ids` (addresses are only recorded).
fn added(ids: &[u64]) -> Vec<u8> {
    rdb_proto::command::MemberContext {
        added: ids
            .iter()
            .map(|&id| rdb_proto::command::MemberRecord {
                id,
                peer_addr: format!("127.0.0.1:{}", 2000 + id),
                client_addr: format!("127.0.0.1:{}", 3000 + id),
                removed: false,
                store_id: 0,
            })
            .collect(),
    }
    .encode_to_vec()
}

impl Group {
    /// Ticks until request `id` is answered.
    fn answer(
        &mut self,
        id: RequestId,
        cut: &dyn Fn(&Message) -> bool,
    ) -> Result<Answer<CommandResult>, Refusal> {
        for _ in 0..300 {
            if let Some(r) = self.reply(id) {
                return r;
            }
            self.tick(cut);
        }
        panic!("request {id} was never answered");
    }

    fn leader_among(&mut self, ids: &[u64]) -> usize {
        for _ in 0..500 {
            if let Some(i) = self
                .cores
                .iter()
                .position(|c| c.replica().is_leader() && ids.contains(&c.replica().id()))
            {
                return i;
            }
            self.tick(&|_| false);
        }
        panic!("no leader among {ids:?}");
    }
}

fn membership_of(a: Result<Answer<CommandResult>, Refusal>) -> Membership {
    match a {
        Ok(Answer::MembershipChanged { membership, .. }) => membership,
        other => panic!("expected a membership change, got {other:?}"),
    }
}

#[test]
fn a_learner_joins_from_a_snapshot_is_promoted_once_caught_up_and_a_voter_leaves() {
    let mut g = Group::new(1000);
    let l = g.leader();
    // Few entries: nothing is compacted by size, so the log still starts at index 1.
    g.write(l, 3, &|_| false);
    assert_eq!(g.first_index(l), 1);
    // Node 4 starts with no membership of its own.
    g.add_replica(&[], 1000);
    // A learner cut off from the leader stays behind and is not promoted.
    let cut_4 = all_of(4);
    g.cores[l].change_membership(100, &[MemberStep::AddLearner(4)], added(&[4]));
    let m = membership_of(g.answer(100, &cut_4));
    assert_eq!((m.voters, m.learners), (vec![1, 2, 3], vec![4]));
    g.write(l, 5, &cut_4);
    g.cores[l].change_membership(101, &[MemberStep::Promote(4)], Vec::new());
    match g.answer(101, &cut_4) {
        Err(Refusal::Rejected(m)) => assert!(m.contains("not caught up"), "{m}"),
        other => panic!("a far-behind learner was promoted: {other:?}"),
    }
    // Connected, it catches up from a snapshot (entry 1 left every log when it was added).
    for _ in 0..100 {
        g.tick(&|_| false);
    }
    assert!(g.cores[l].replica().matched(4).unwrap() >= g.cores[l].replica().commit_index());
    assert_eq!(g.cores[3].replica().voters(), vec![1, 2, 3]);
    g.cores[l].change_membership(102, &[MemberStep::Promote(4)], Vec::new());
    assert_eq!(
        membership_of(g.answer(102, &|_| false)).voters,
        vec![1, 2, 3, 4]
    );
    // A follower leaves; the rest keep writing and hold the same data.
    let f = (1..=3u64).find(|&id| id != l as u64 + 1).unwrap();
    g.cores[l].change_membership(103, &[MemberStep::Remove(f)], Vec::new());
    let m = membership_of(g.answer(103, &|_| false));
    assert!(!m.voters.contains(&f) && m.voters.contains(&4));
    let gone = all_of(f);
    g.write(l, 10, &gone);
    for _ in 0..50 {
        g.tick(&gone);
    }
    let data = |i: usize| g.disks[i].lock().data().clone();
    let others: Vec<usize> = (0..4).filter(|&i| i as u64 + 1 != f).collect();
    for &i in &others[1..] {
        assert_eq!(data(i), data(others[0]), "replica {} differs", i + 1);
    }
    // Member records travel with the data: node 4 knows its own address, and f is marked removed.
    let rec = g.disks[3]
        .lock()
        .data()
        .get(&rdb_storage::member_key(4).to_vec())
        .cloned();
    let rec = rdb_proto::command::MemberRecord::decode(rec.unwrap().as_slice()).unwrap();
    assert_eq!(rec.peer_addr, "127.0.0.1:2004");
    let rec = g.disks[others[0]]
        .lock()
        .data()
        .get(&rdb_storage::member_key(f).to_vec())
        .cloned();
    assert!(
        rdb_proto::command::MemberRecord::decode(rec.unwrap().as_slice())
            .unwrap()
            .removed
    );
}

#[test]
fn the_leader_hands_over_before_it_is_removed_and_a_joint_change_is_left_automatically() {
    let mut g = Group::new(1000);
    let l = g.leader();
    let me = l as u64 + 1;
    g.write(l, 3, &|_| false);
    g.cores[l].change_membership(200, &[MemberStep::Remove(me)], Vec::new());
    match g.answer(200, &|_| false) {
        Err(Refusal::Unavailable(m)) => assert!(m.contains("moves to node"), "{m}"),
        other => panic!("the leader accepted its own removal: {other:?}"),
    }
    let rest: Vec<u64> = (1..=3).filter(|&id| id != me).collect();
    let l2 = g.leader_among(&rest);
    g.cores[l2].change_membership(201, &[MemberStep::Remove(me)], Vec::new());
    let m = membership_of(g.answer(201, &|_| false));
    assert_eq!(m.voters, rest);
    // Replace a voter by a learner in one joint change: enter, then leave on its own.
    g.add_replica(&[], 1000);
    let gone = all_of(me);
    g.cores[l2].change_membership(202, &[MemberStep::AddLearner(4)], added(&[4]));
    membership_of(g.answer(202, &gone));
    for _ in 0..100 {
        g.tick(&gone);
    }
    let out = rest[0];
    let l3 = g.leader_among(&rest);
    if g.cores[l3].replica().id() == out {
        // Replacing the leader itself goes through a hand-over first.
        g.cores[l3].change_membership(
            203,
            &[MemberStep::Promote(4), MemberStep::Remove(out)],
            Vec::new(),
        );
        assert!(matches!(g.answer(203, &gone), Err(Refusal::Unavailable(_))));
    }
    let l4 = g.leader_among(&[rest[1], 4]);
    g.cores[l4].change_membership(
        204,
        &[MemberStep::Promote(4), MemberStep::Remove(out)],
        Vec::new(),
    );
    let m = membership_of(g.answer(204, &gone));
    assert_eq!(
        (m.voters.clone(), m.voters_outgoing.clone()),
        (vec![rest[1], 4], rest.clone())
    );
    for _ in 0..50 {
        g.tick(&gone);
    }
    for i in [rest[1] as usize - 1, 3] {
        let cs = g.cores[i].replica().conf_state();
        assert!(
            cs.voters_outgoing.is_empty(),
            "node {} stayed joint: {cs:?}",
            i + 1
        );
    }
    assert!(
        g.removed.iter().all(|&id| id == me || id == out),
        "{:?}",
        g.removed
    );
}

/// Like etcd's initial election tick advance: a group that starts (or restarts) together elects
/// a leader within the randomised part of the timeout, not after a whole timeout first.
#[test]
fn a_group_started_together_elects_without_sitting_out_a_whole_timeout() {
    let mut g = Group::new(1000);
    // Election timeouts are 11-13 ticks here; each replica starts 9 ticks into its own.
    let first = g.ticks_to_leader();
    assert!(first <= 4, "a fresh group took {first} ticks to elect");
    let l = g.leader();
    g.write(l, 3, &|_| false);
    for i in 0..3 {
        g.restart(i);
    }
    let again = g.ticks_to_leader();
    assert!(again <= 4, "a restarted group took {again} ticks to elect");
}

/// The advance must not let a restarted follower unseat a live leader: its pre-vote is refused
/// by peers that hear from the leader, and its term stays.
#[test]
fn a_follower_restarted_beside_a_live_leader_does_not_disturb_it() {
    let mut g = Group::new(1000);
    let l = g.leader();
    let term = g.cores[l].replica().term();
    let f = (l + 1) % 3;
    g.restart(f);
    for _ in 0..40 {
        g.tick(&|_| false);
        assert!(
            g.cores[l].replica().is_leader(),
            "the leader lost its place"
        );
    }
    assert_eq!(g.cores[l].replica().term(), term);
    assert_eq!(g.cores[f].replica().term(), term);
    assert_eq!(g.cores[f].replica().leader_id(), l as u64 + 1);
}

/// One write costs each replica one fsync (its entry), as in etcd: raising the commit index
/// afterwards is written unsynced, so the leader answers without a second fsync.
#[test]
fn a_write_costs_each_replica_one_fsync() {
    let mut g = Group::new(1000);
    let l = g.leader();
    g.write(l, 2, &|_| false);
    for _ in 0..5 {
        g.tick(&|_| false);
    }
    let before: Vec<u64> = g.disks.iter().map(|d| d.synced_writes()).collect();
    g.cores[l].propose(77, put(77));
    g.pump(&|_| false);
    for _ in 0..5 {
        g.tick(&|_| false);
    }
    assert!(
        matches!(g.reply(77), Some(Ok(_))),
        "the write was not answered"
    );
    let after: Vec<u64> = g.disks.iter().map(|d| d.synced_writes()).collect();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert_eq!(
            a - b,
            1,
            "replica {} synced {} times for one write",
            i + 1,
            a - b
        );
    }
}

#[test]
fn a_second_membership_change_waits_until_the_first_applied() {
    let mut g = Group::new(1000);
    let l = g.leader();
    g.write(l, 3, &|_| false);
    g.add_replica(&[], 1000);
    g.add_replica(&[], 1000);
    g.cores[l].change_membership(300, &[MemberStep::AddLearner(4)], added(&[4]));
    // Proposed, not applied yet: another change is refused, to be retried.
    g.cores[l].change_membership(301, &[MemberStep::AddLearner(5)], added(&[5]));
    match g.answer(301, &|_| false) {
        Err(Refusal::Unavailable(m)) => assert!(m.contains("still being applied"), "{m}"),
        other => panic!("a second change was taken while one was pending: {other:?}"),
    }
    membership_of(g.answer(300, &|_| false));
    g.cores[l].change_membership(302, &[MemberStep::AddLearner(5)], added(&[5]));
    let m = membership_of(g.answer(302, &|_| false));
    assert_eq!(m.learners, vec![4, 5]);
}
