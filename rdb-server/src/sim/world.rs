//! The simulated world: nodes, disks, network, and the checks at the end. Clients are in
//! [`clients`], faults in [`faults`].

mod clients;
mod faults;

use clients::Client;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};

use prost::Message as _;
use raft::prelude::{Message, MessageType};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rdb_proto::command::Command;
use rdb_storage::CommandResult;

use super::linearizability::{self, CheckResult, Op, Operation};
use super::{Planted, SimCore};
use crate::raft_core::mem::{MemDisk, MemKv, MemLog};
use crate::raft_core::{Answer, Core, CoreConfig, Refusal, ReplicaConfig};

/// Steps per tick: messages are delayed by a number of steps, so they can arrive between ticks.
const STEPS_PER_TICK: u64 = 10;
/// Election timeout in ticks (each node's is fixed per life within [10, 20)).
const ELECTION_TICKS: usize = 10;
/// How many steps the end of a run may take to heal and converge.
const HEAL_STEPS: u64 = 40_000;

/// One scenario: a seed and the knobs it decided.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Seeds every random choice of the run.
    pub seed: u64,
    /// Voters in the group.
    pub nodes: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Keys they use.
    pub keys: usize,
    /// Ticks of workload and faults before everything heals.
    pub ticks: u64,
    /// Largest one-way delay of a message, in steps.
    pub max_delay: u64,
    /// Peer messages lost, per mille.
    pub drop_per_mille: u32,
    /// Peer messages delivered twice, per mille.
    pub dup_per_mille: u32,
    /// Mean ticks between faults.
    pub fault_every: u64,
    /// Entries a request id is remembered for.
    pub dedup_window: u64,
    /// Compact once this many applied entries are in the log (small: snapshots happen).
    pub snapshot_threshold: u64,
    /// Deliberate bugs.
    pub planted: Planted,
    /// A spare node (id `nodes + 1`, starting with no membership) exists, and faults include
    /// membership changes: adding it as a learner, promoting it, removing voters (the leader
    /// too), one step or a joint change at a time.
    pub membership: bool,
}

impl Scenario {
    /// The scenario seed `seed` stands for.
    pub fn from_seed(seed: u64) -> Scenario {
        let mut r = StdRng::seed_from_u64(seed ^ 0x5eed_5eed);
        let clients = r.gen_range(2..=5);
        Scenario {
            seed,
            nodes: if r.gen_bool(0.75) { 3 } else { 5 },
            clients,
            keys: r.gen_range(1..=4),
            ticks: r.gen_range(300..=900),
            max_delay: r.gen_range(1..=30),
            drop_per_mille: *[0, 0, 10, 50, 150].choose(&mut r).unwrap_or(&0),
            dup_per_mille: *[0, 10, 50].choose(&mut r).unwrap_or(&0),
            fault_every: r.gen_range(15..=60),
            // Tight windows make retries land near the edge (see `Client::may_retry`).
            dedup_window: if r.gen_bool(0.5) {
                r.gen_range(60..=160)
            } else {
                1_000_000
            },
            snapshot_threshold: r.gen_range(10..=80),
            planted: Planted::default(),
            membership: r.gen_bool(0.5),
        }
    }
}

/// What a run did, for the summary of a batch of runs.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Operations in the checked history.
    pub ops: usize,
    /// Operations that returned success.
    pub ok: usize,
    /// Faults injected.
    pub faults: usize,
    /// Snapshots installed.
    pub snapshots: usize,
    /// Final applied index.
    pub applied: u64,
    /// Retries of writes that may have applied, sent when the log had already moved more
    /// than half the dedup window past where the first attempt could have landed.
    pub late_retries: usize,
    /// A hash of the history and final data: the same seed must give the same fingerprint.
    pub fingerprint: u64,
    /// Membership changes that applied (answered to the node that proposed them).
    pub member_changes: usize,
    /// Nodes removed that stopped for good.
    pub removed: usize,
}

/// Why a run failed, with what is needed to replay it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The scenario.
    pub scenario: Scenario,
    /// What went wrong.
    pub reason: String,
    /// The faults injected, in order, with their step.
    pub trace: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "simulation failed: {}", self.reason)?;
        writeln!(f, "scenario: {:?}", self.scenario)?;
        writeln!(f, "faults ({}):", self.trace.len())?;
        for t in &self.trace {
            writeln!(f, "  {t}")?;
        }
        Ok(())
    }
}

/// Runs one scenario to its checks. A panic inside the core is caught and reported as a failure.
pub fn run(sc: &Scenario) -> Result<Stats, Box<Failure>> {
    let sc2 = sc.clone();
    let mut trace = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut w = World::new(sc2);
        let r = w.run();
        (r, std::mem::take(&mut w.trace))
    }));
    match result {
        Ok((Ok(stats), _)) => Ok(stats),
        Ok((Err(reason), t)) => {
            trace = t;
            Err(Box::new(Failure {
                scenario: sc.clone(),
                reason,
                trace,
            }))
        }
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Err(Box::new(Failure {
                scenario: sc.clone(),
                reason: format!("panic: {msg}"),
                trace,
            }))
        }
    }
}

/// A client request as it travels.
#[derive(Debug, Clone)]
enum Req {
    Write(Command),
    Read(String),
}

/// A reply as it travels back.
#[derive(Debug, Clone)]
enum Rep {
    Written(CommandResult),
    Value(Option<String>),
    Refused(Refusal),
}

#[derive(Debug)]
enum Envelope {
    Raft(Message),
    Request {
        node: usize,
        client: usize,
        attempt: (u64, u64),
        req: Req,
    },
    Reply {
        client: usize,
        attempt: (u64, u64),
        rep: Rep,
    },
}

enum Input {
    Raft(Message),
    Request {
        client: usize,
        attempt: (u64, u64),
        req: Req,
    },
    SnapshotReport {
        to: u64,
        ok: bool,
    },
    Unreachable {
        to: u64,
    },
}

/// A client request inside a node's core: the client, its attempt, what a read reads.
type InCore = (usize, (u64, u64), Option<String>);

struct Node {
    disk: MemDisk,
    core: Option<SimCore>,
    inbox: Vec<Input>,
    paused_until: u64,
    slow_until: u64,
    restart_at: Option<u64>,
    /// Requests in the core: id -> (client, attempt, what a read reads).
    requests: BTreeMap<u64, InCore>,
}

struct World {
    sc: Scenario,
    rng: StdRng,
    now: u64,
    nodes: Vec<Node>,
    net: BinaryHeap<Reverse<(u64, u64, usize)>>,
    in_flight: BTreeMap<usize, Envelope>,
    next_envelope: usize,
    cut: BTreeSet<(usize, usize)>,
    heal_at: u64,
    clients: Vec<Client>,
    history: Vec<Operation>,
    next_request: u64,
    stats: Stats,
    trace: Vec<String>,
    healing: bool,
    /// Nodes that stopped for good: they applied their own removal, or a peer that knows they
    /// were removed refused them (as the peer service does).
    removed: BTreeSet<usize>,
}

fn node_index(id: u64) -> usize {
    id as usize - 1
}

impl World {
    fn new(sc: Scenario) -> World {
        let rng = StdRng::seed_from_u64(sc.seed);
        let voters: Vec<u64> = (1..=sc.nodes as u64).collect();
        let spare = usize::from(sc.membership);
        let nodes = (0..sc.nodes + spare)
            .map(|i| Node {
                // The spare joins later: no membership of its own until a snapshot brings it.
                disk: MemDisk::bootstrap(if i < sc.nodes { &voters } else { &[] }),
                core: None,
                inbox: Vec::new(),
                paused_until: 0,
                slow_until: 0,
                restart_at: Some(0),
                requests: BTreeMap::new(),
            })
            .collect();
        let clients = (0..sc.clients)
            .map(|i| Client {
                target: i % sc.nodes,
                pending: None,
                next_seq: 1,
                idle_until: 0,
                script: None,
            })
            .collect();
        World {
            sc,
            rng,
            now: 0,
            nodes,
            net: BinaryHeap::new(),
            in_flight: BTreeMap::new(),
            next_envelope: 0,
            cut: BTreeSet::new(),
            heal_at: 0,
            clients,
            history: Vec::new(),
            next_request: 1,
            stats: Stats::default(),
            trace: Vec::new(),
            healing: false,
            removed: BTreeSet::new(),
        }
    }

    fn core_config(&mut self, id: u64) -> CoreConfig {
        CoreConfig {
            replica: ReplicaConfig {
                id,
                election_ticks: ELECTION_TICKS,
                heartbeat_ticks: 2,
                fixed_election_timeout: Some(
                    self.rng.gen_range(ELECTION_TICKS..2 * ELECTION_TICKS),
                ),
                snapshot_threshold: self.sc.snapshot_threshold,
                catch_up_entries: self.sc.snapshot_threshold / 4,
                retained_log_cap: self.sc.snapshot_threshold * 4,
            },
            read_retry_ticks: 4,
            planted: self.sc.planted.core,
            read_ctx_salt: self.rng.gen(),
        }
    }

    fn start(&mut self, i: usize) -> Result<(), String> {
        let cfg = self.core_config(i as u64 + 1);
        let disk = self.nodes[i].disk.clone();
        let mut app = MemKv::open(disk.clone(), self.sc.dedup_window);
        app.forget_request_ids = self.sc.planted.apply_retries_twice;
        // Compaction drops dead dedup records at its own pace on each replica.
        app.compact_every = self.rng.gen_range(1..=6);
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let core = Core::new(&cfg, MemLog::open(disk), app, &logger)
            .map_err(|e| format!("node {} cannot restart: {e}", i + 1))?;
        let n = &mut self.nodes[i];
        n.core = Some(core);
        n.restart_at = None;
        n.inbox.clear();
        n.requests.clear();
        Ok(())
    }

    fn note(&mut self, what: String) {
        self.stats.faults += 1;
        self.trace.push(format!(
            "step {:>6} (tick {:>4}): {what}",
            self.now,
            self.now / STEPS_PER_TICK
        ));
    }

    fn run(&mut self) -> Result<Stats, String> {
        let end = self.sc.ticks * STEPS_PER_TICK;
        while self.now < end {
            self.step(true)?;
        }
        self.heal();
        let limit = self.now + HEAL_STEPS;
        while !self.converged() {
            if self.now >= limit {
                return Err(format!(
                    "no convergence within {HEAL_STEPS} steps after healing: {}",
                    self.positions()
                ));
            }
            self.step(false)?;
        }
        // One more read of every key, after everything healed: a lost write shows here.
        let keys: Vec<Op> = (0..self.sc.keys)
            .map(|k| Op::Get {
                key: format!("k{k}"),
            })
            .collect();
        self.clients[0].script = Some(keys);
        self.clients[0].idle_until = self.now;
        let limit = self.now + HEAL_STEPS;
        while !(self.converged()
            && self.clients[0]
                .script
                .as_ref()
                .is_some_and(|s| s.is_empty()))
        {
            if self.now >= limit {
                return Err(format!("final reads did not finish: {}", self.positions()));
            }
            self.step(false)?;
        }
        self.check()
    }

    fn positions(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            match &n.core {
                Some(c) => {
                    let r = c.replica();
                    let _ = write!(
                        s,
                        "[n{} {:?} term {} commit {} applied {} last {}] ",
                        i + 1,
                        r.role(),
                        r.term(),
                        r.commit_index(),
                        r.applied_index(),
                        r.log_bounds().1
                    );
                }
                None => {
                    let _ = write!(s, "[n{} down] ", i + 1);
                }
            }
        }
        s
    }

    /// The members (voters and learners) as the leader applied them, by index.
    fn members(&self) -> Option<Vec<usize>> {
        let l = self.leader()?;
        let cs = self.nodes[l].core.as_ref()?.replica().conf_state();
        let mut ids: Vec<u64> = cs
            .voters
            .iter()
            .chain(&cs.voters_outgoing)
            .chain(&cs.learners)
            .chain(&cs.learners_next)
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Some(ids.into_iter().map(node_index).collect())
    }

    /// Every member up, one leader, every member applied to the same index, the membership
    /// out of any joint configuration, no client busy. Nodes never added or removed for good
    /// are left out.
    fn converged(&self) -> bool {
        let Some(members) = self.members() else {
            return false;
        };
        let mut applied = BTreeSet::new();
        for &i in &members {
            let Some(c) = &self.nodes[i].core else {
                return false;
            };
            let r = c.replica();
            if r.applied_index() != r.commit_index() || r.log_bounds().1 != r.commit_index() {
                return false;
            }
            if !r.conf_state().voters_outgoing.is_empty() {
                return false;
            }
            applied.insert(r.applied_index());
        }
        let leaders = self
            .nodes
            .iter()
            .filter_map(|n| n.core.as_ref())
            .filter(|c| c.replica().is_leader())
            .count();
        leaders == 1 && applied.len() == 1 && self.clients.iter().all(|c| c.pending.is_none())
    }

    fn step(&mut self, faults: bool) -> Result<(), String> {
        self.now += 1;
        if faults && self.now.is_multiple_of(STEPS_PER_TICK) {
            self.maybe_fault();
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].restart_at.is_some_and(|t| t <= self.now) && !self.removed.contains(&i)
            {
                self.start(i)?;
            }
        }
        if self.heal_at != 0 && self.now >= self.heal_at {
            self.heal_at = 0;
            self.cut.clear();
            self.note("links healed".into());
        }
        self.deliver();
        self.drive_clients(!self.healing || self.clients.iter().any(|c| c.script.is_some()));
        if self.now.is_multiple_of(STEPS_PER_TICK) {
            self.tick_nodes();
        }
        for i in 0..self.nodes.len() {
            self.run_node(i)?;
        }
        Ok(())
    }

    fn tick_nodes(&mut self) {
        for i in 0..self.nodes.len() {
            let (paused, slow) = {
                let n = &self.nodes[i];
                (n.paused_until > self.now, n.slow_until > self.now)
            };
            if paused {
                continue;
            }
            // A slow clock ticks at a third of the rate; any clock jitters a little.
            let skip = (slow && self.rng.gen_ratio(2, 3)) || self.rng.gen_ratio(1, 50);
            let ticks = if skip {
                0
            } else if self.rng.gen_ratio(1, 50) {
                2
            } else {
                1
            };
            if let Some(c) = &mut self.nodes[i].core {
                for _ in 0..ticks {
                    c.tick();
                }
            }
        }
    }

    fn leader(&self) -> Option<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                n.core
                    .as_ref()
                    .filter(|c| c.replica().is_leader())
                    .map(|c| (c.replica().term(), i))
            })
            .max()
            .map(|(_, i)| i)
    }

    fn post(&mut self, delay: u64, e: Envelope) {
        let id = self.next_envelope;
        self.next_envelope += 1;
        self.in_flight.insert(id, e);
        self.net.push(Reverse((self.now + delay, id as u64, id)));
    }

    fn send_raft(&mut self, from: usize, m: Message) {
        let to = node_index(m.to);
        let lost = self.cut.contains(&(from, to))
            || (!self.healing && self.rng.gen_ratio(self.sc.drop_per_mille, 1000));
        if lost {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.nodes[from].inbox.push(Input::SnapshotReport {
                    to: m.to,
                    ok: false,
                });
            }
            self.nodes[from].inbox.push(Input::Unreachable { to: m.to });
            return;
        }
        let copies = if !self.healing && self.rng.gen_ratio(self.sc.dup_per_mille, 1000) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.rng.gen_range(1..=self.sc.max_delay);
            self.post(delay, Envelope::Raft(m.clone()));
        }
    }

    fn deliver(&mut self) {
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
                    let (from, to) = (node_index(m.from), node_index(m.to));
                    let ok = self.nodes[to].core.is_some() && !self.cut.contains(&(from, to));
                    if ok && self.knows_removed(to, m.from) {
                        // The peer service refuses a removed node, which then stops for good.
                        if self.nodes[from].core.is_some() {
                            self.stop_removed(from, &format!("n{} refused it", to + 1));
                        }
                        continue;
                    }
                    if m.get_msg_type() == MessageType::MsgSnapshot {
                        self.nodes[from]
                            .inbox
                            .push(Input::SnapshotReport { to: m.to, ok });
                    }
                    if ok {
                        self.nodes[to].inbox.push(Input::Raft(m));
                    }
                }
                Envelope::Request {
                    node,
                    client,
                    attempt,
                    req,
                } => {
                    if self.nodes[node].core.is_some() {
                        self.nodes[node].inbox.push(Input::Request {
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

    fn run_node(&mut self, i: usize) -> Result<(), String> {
        if self.nodes[i].paused_until > self.now {
            return Ok(());
        }
        let Some(mut core) = self.nodes[i].core.take() else {
            return Ok(());
        };
        let mut inbox = std::mem::take(&mut self.nodes[i].inbox);
        inbox.shuffle(&mut self.rng);
        for input in inbox {
            match input {
                Input::Raft(m) => {
                    core.step(m);
                }
                Input::SnapshotReport { to, ok } => core.report_snapshot(to, ok),
                Input::Unreachable { to } => core.report_unreachable(to),
                Input::Request {
                    client,
                    attempt,
                    req,
                } => {
                    let id = self.next_request;
                    self.next_request += 1;
                    match req {
                        Req::Write(cmd) => {
                            self.nodes[i].requests.insert(id, (client, attempt, None));
                            core.propose(id, cmd.encode_to_vec());
                        }
                        Req::Read(key) => {
                            self.nodes[i]
                                .requests
                                .insert(id, (client, attempt, Some(key)));
                            core.read(id);
                        }
                    }
                }
            }
        }
        let mut msgs: Vec<Message> = Vec::new();
        let out = core.advance(&mut msgs);
        let out = match out {
            Ok(out) => out,
            Err(e) => return Err(format!("node {} storage error: {e}", i + 1)),
        };
        if out.snapshot_applied {
            self.stats.snapshots += 1;
        }
        if out.removed {
            self.stop_removed(i, "it applied its own removal");
            return Ok(());
        }
        for m in msgs {
            self.send_raft(i, m);
        }
        for (id, answer) in out.replies {
            if let Ok(Answer::MembershipChanged { .. }) = &answer {
                self.stats.member_changes += 1;
            }
            let Some((client, attempt, read_key)) = self.nodes[i].requests.remove(&id) else {
                continue;
            };
            let rep = match answer {
                Ok(Answer::Written(r)) => Rep::Written(r),
                Ok(Answer::ReadReady { .. }) => {
                    let key = read_key.unwrap_or_default();
                    let v = self.nodes[i].disk.lock().get(key.as_bytes());
                    Rep::Value(v.map(|v| String::from_utf8_lossy(&v).into_owned()))
                }
                Ok(Answer::MembershipChanged { .. }) => continue,
                Err(r) => Rep::Refused(r),
            };
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
        self.nodes[i].core = Some(core);
        Ok(())
    }

    /// Whether node `at` applied the removal of node `id` (its member records say so).
    fn knows_removed(&self, at: usize, id: u64) -> bool {
        if !self.sc.membership {
            return false;
        }
        let key = rdb_storage::member_key(id).to_vec();
        let d = self.nodes[at].disk.lock();
        d.data().get(&key).is_some_and(|v| {
            rdb_proto::command::MemberRecord::decode(v.as_slice()).is_ok_and(|r| r.removed)
        })
    }

    /// Node `i` was removed from the group: it stops and never starts again.
    fn stop_removed(&mut self, i: usize, how: &str) {
        self.removed.insert(i);
        self.stats.removed += 1;
        let n = &mut self.nodes[i];
        n.core = None;
        n.restart_at = None;
        n.inbox.clear();
        n.requests.clear();
        self.note(format!("n{} stops: removed from the group ({how})", i + 1));
    }

    fn max_commit(&self) -> u64 {
        self.nodes
            .iter()
            .filter_map(|n| n.core.as_ref())
            .map(|c| c.replica().commit_index())
            .max()
            .unwrap_or(0)
    }

    fn max_last_index(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| match &n.core {
                Some(c) => c.replica().log_bounds().1,
                None => n.disk.lock().applied().0,
            })
            .max()
            .unwrap_or(0)
    }

    fn check(&mut self) -> Result<Stats, String> {
        // Replicas (every member): the same bytes at the same applied index, but for dedup
        // records past their window, which compaction drops at different times.
        let members = self.members().ok_or("no leader at the end")?;
        let window = self.sc.dedup_window;
        let states: Vec<_> = members
            .iter()
            .map(|&i| {
                let d = self.nodes[i].disk.lock();
                let applied = d.applied().0;
                let live: BTreeMap<Vec<u8>, Vec<u8>> = d
                    .data()
                    .iter()
                    .filter(|(k, v)| !rdb_storage::dedup::is_dead(k, v, applied, window))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                (applied, live)
            })
            .collect();
        let first = members[0] + 1;
        for (s, &i) in states.iter().zip(&members).skip(1) {
            if s.0 != states[0].0 {
                return Err(format!(
                    "n{} applied {} but n{first} applied {}",
                    i + 1,
                    s.0,
                    states[0].0
                ));
            }
            if s.1 != states[0].1 {
                let diff: Vec<String> =
                    s.1.iter()
                        .filter(|(k, v)| states[0].1.get(*k) != Some(v))
                        .chain(states[0].1.iter().filter(|(k, _)| !s.1.contains_key(*k)))
                        .take(5)
                        .map(|(k, v)| {
                            format!(
                                "{}={}",
                                String::from_utf8_lossy(k),
                                String::from_utf8_lossy(v)
                            )
                        })
                        .collect();
                return Err(format!(
                    "replicas differ: n{} vs n{first} at applied index {}: {diff:?}",
                    i + 1,
                    s.0
                ));
            }
        }
        self.stats.applied = states[0].0;
        self.stats.ops = self.history.len();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        format!("{:?}{:?}", self.history, states[0]).hash(&mut h);
        self.stats.fingerprint = h.finish();
        match linearizability::check(&self.history, 2_000_000) {
            CheckResult::Linearizable => Ok(self.stats.clone()),
            CheckResult::Illegal(v) => Err(format!("history is not linearizable:\n{v}")),
            CheckResult::Unknown { key } => {
                Err(format!("the checker ran out of budget on key {key}"))
            }
        }
    }
}
