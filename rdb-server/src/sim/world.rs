//! The simulated world: stores, their disks and the network. Clients are in [`clients`],
//! faults in [`faults`], the crash model of a store's directory in [`disk`], the network's
//! delivery in [`net`], convergence and the checks at the end in [`checks`].

mod checks;
mod clients;
mod disk;
mod faults;
mod net;
mod pd;

use clients::Client;
use disk::StoreDisk;
use pd::SimPd;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rdb_proto::command::Command;
use rdb_storage::keys::Space;
use rdb_storage::region::{self, Peer, Region, RegionEpoch};
use rdb_storage::CommandResult;

use super::linearizability::{KeyMeta, Op, VersionedOperation};
use super::Planted;
use crate::raft_core::{Answer, CoreConfig, Refusal, ReplicaConfig, RequestId};
use crate::store::{RegionMessage, StoreCore};

/// Steps per tick: messages are delayed by a number of steps, so they can arrive between ticks.
const STEPS_PER_TICK: u64 = 10;
/// Election timeout in ticks (each store's is fixed per life within [10, 20)).
const ELECTION_TICKS: usize = 10;
/// How many steps the end of a run may take to heal and converge.
const HEAL_STEPS: u64 = 40_000;
/// How long a snapshot build or install on its own thread may take before the run fails.
const BACKGROUND_BOUND: Duration = Duration::from_secs(20);

/// The shape of the cluster a scenario runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A config-file cluster: every store hosts region 1 (every key), store id = peer id, no
    /// PD; membership changes add the spare store and remove voters.
    Cluster,
    /// PD-mode stores: regions split and move between stores (new peer ids for each move).
    Pd,
}

/// One scenario: a seed and the knobs it decided.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Seeds every random choice of the run.
    pub seed: u64,
    /// The shape of the cluster.
    pub mode: Mode,
    /// Stores hosting region 1 at the start.
    pub stores: usize,
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
    /// A spare store (id `stores + 1`, hosting nothing at first) exists, and faults include
    /// membership changes: adding a learner on a store without a peer of the region,
    /// promoting it, removing voters (the leader too), one step or a joint change at a time.
    pub membership: bool,
    /// PD mode: faults include merges of a region into a neighbour, asked of its leader as an
    /// operator would (specs/017-merge).
    pub merges: bool,
    /// PD mode: PD's scheduler runs in the world (see `world::pd`): two spare stores start
    /// empty, faults include a store lost for good and a store decommissioned, and a run ends
    /// only once every region has three voters on the stores that remain.
    pub scheduling: bool,
    /// Revisions of history each region keeps (small: compaction and its background deletion
    /// run all the time; specs/018-versions).
    pub history_revisions: u64,
    /// Clients also send conditional writes: CAS and delete by expected version or by
    /// expected `mod_revision` (specs/018-versions).
    pub conditional_writes: bool,
}

impl Scenario {
    /// The scenario seed `seed` stands for.
    pub fn from_seed(seed: u64) -> Scenario {
        let mut r = StdRng::seed_from_u64(seed ^ 0x5eed_5eed);
        let mode = if r.gen_bool(0.5) {
            Mode::Cluster
        } else {
            Mode::Pd
        };
        Scenario {
            seed,
            mode,
            stores: if mode == Mode::Cluster && r.gen_bool(0.25) {
                5
            } else {
                3
            },
            clients: r.gen_range(2..=5),
            keys: r.gen_range(1..=4),
            ticks: r.gen_range(200..=500),
            max_delay: r.gen_range(1..=30),
            drop_per_mille: *[0, 0, 10, 50, 150].choose(&mut r).unwrap_or(&0),
            dup_per_mille: *[0, 10, 50].choose(&mut r).unwrap_or(&0),
            fault_every: r.gen_range(15..=60),
            // Tight windows make retries land near the edge (see `World::within_window`).
            dedup_window: if r.gen_bool(0.5) {
                r.gen_range(60..=160)
            } else {
                1_000_000
            },
            snapshot_threshold: r.gen_range(10..=80),
            planted: Planted::default(),
            membership: r.gen_bool(0.5),
            // Drawn last, so the scenarios of seeds without merges are the ones they were
            // before merges existed.
            merges: r.gen_bool(0.5),
            // Drawn after the others for the same reason.
            scheduling: mode == Mode::Pd && r.gen_bool(0.5),
            // Drawn after the others for the same reason.
            history_revisions: r.gen_range(1..=30),
            // Drawn after the others for the same reason: clients of seeds without it draw
            // what they drew before conditional writes existed.
            conditional_writes: r.gen_bool(0.5),
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
    /// Snapshots delivered to a store.
    pub snapshots: usize,
    /// Final applied indexes, summed over regions.
    pub applied: u64,
    /// Retries of writes that may have applied, sent when a region's log had already moved
    /// more than half the dedup window past where the first attempt could have landed.
    pub late_retries: usize,
    /// Retries of writes that may have applied, sent to another region than every earlier
    /// attempt (a split or a move took the key meanwhile).
    pub moved_retries: usize,
    /// Regions at the end.
    pub regions: usize,
    /// Membership changes that applied (answered to the store that proposed them).
    pub member_changes: usize,
    /// Peers removed from their store (by a membership change, or folded into another
    /// region by a merge).
    pub removed: usize,
    /// Merges a replica applied (each merge counts once per replica of its target).
    pub merged: usize,
    /// Operators PD's scheduler started.
    pub operators: usize,
    /// Bytes of write-ahead log that power cuts lost.
    pub lost_bytes: u64,
    /// Conditional writes (by version or mod_revision) answered, and of those, how many
    /// found their condition held.
    pub conditional: (usize, usize),
    /// A hash of the history and final data: the same seed must give the same fingerprint.
    pub fingerprint: u64,
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

/// Runs one scenario to its checks. A panic inside a store is caught and reported as a failure.
pub fn run(sc: &Scenario) -> Result<Stats, Box<Failure>> {
    let trace = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (sc2, t2) = (sc.clone(), trace.clone());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut w = World::new(sc2)?;
        let r = w.run();
        *t2.lock().unwrap_or_else(|p| p.into_inner()) = std::mem::take(&mut w.trace);
        r
    }));
    let reason = match result {
        Ok(Ok(stats)) => return Ok(stats),
        Ok(Err(reason)) => reason,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            format!("panic: {msg}")
        }
    };
    let trace = std::mem::take(&mut *trace.lock().unwrap_or_else(|p| p.into_inner()));
    Err(Box::new(Failure {
        scenario: sc.clone(),
        reason,
        trace,
    }))
}

/// A client request as it travels: the region and epoch it was routed to, the key, and for a
/// write the command.
#[derive(Debug, Clone)]
struct Req {
    region: u64,
    epoch: RegionEpoch,
    key: String,
    write: Option<Command>,
}

/// A reply as it travels back.
#[derive(Debug, Clone)]
enum Rep {
    Written(CommandResult),
    /// A read's answer: the value and its versions (None: not found), and the region's last
    /// revision as of the read.
    Read {
        value: Option<(String, KeyMeta)>,
        revision: u64,
    },
    /// Not the leader: the store of the leader the refusing store knows of.
    NotLeader(Option<u64>),
    Refused(Refusal),
    /// The store does not route the request to that region (moved, split, not here).
    Region,
}

#[derive(Debug)]
enum Envelope {
    Raft(RegionMessage),
    Request {
        store: usize,
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
    Raft(RegionMessage),
    Request {
        client: usize,
        attempt: (u64, u64),
        req: Req,
    },
    SnapshotReport {
        region: u64,
        to: u64,
        ok: bool,
    },
    Unreachable {
        store: u64,
    },
}

/// A client request inside a store: the client, its attempt, what a read reads.
type InStore = (usize, (u64, u64), Option<String>);

struct Node {
    /// Declared before its disk: the database closes before the directory goes.
    store: Option<StoreCore>,
    disk: StoreDisk,
    inbox: Vec<Input>,
    paused_until: u64,
    slow_until: u64,
    /// Until this step, appends to this store take longer than its other messages.
    appends_lag_until: u64,
    restart_at: Option<u64>,
    requests: BTreeMap<RequestId, InStore>,
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
    history: Vec<VersionedOperation>,
    /// Every acknowledged write that changed its key: the key, its real-time interval and the
    /// revision it got (specs/018-versions), checked at the end (see `checks::revisions_fit`).
    written: Vec<(String, u64, u64, u64)>,
    next_request: u64,
    /// Region and peer ids, drawn as PD draws them (PD mode).
    next_id: u64,
    stats: Stats,
    trace: Vec<String>,
    healing: bool,
    /// Stores that hosted a peer of region 1 (a config-file cluster's nodes, which join once).
    joined: BTreeSet<u64>,
    /// PD and its scheduler, in scenarios with `scheduling`.
    pd: Option<SimPd>,
    /// Stores lost for good (by index): never started again.
    lost: BTreeSet<usize>,
}

fn store_index(id: u64) -> usize {
    id as usize - 1
}

impl World {
    fn new(sc: Scenario) -> Result<World, String> {
        let rng = StdRng::seed_from_u64(sc.seed);
        let spare = if sc.scheduling {
            2
        } else {
            usize::from(sc.membership)
        };
        let nodes = (0..sc.stores + spare)
            .map(|_| {
                Ok(Node {
                    store: None,
                    disk: StoreDisk::new()?,
                    inbox: Vec::new(),
                    paused_until: 0,
                    slow_until: 0,
                    appends_lag_until: 0,
                    restart_at: None,
                    requests: BTreeMap::new(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let clients = (0..sc.clients)
            .map(|i| Client {
                target: i % sc.stores,
                pending: None,
                next_seq: 1,
                idle_until: 0,
                script: None,
            })
            .collect();
        let sc_stores = sc.stores as u64;
        let mut w = World {
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
            written: Vec::new(),
            next_request: 1,
            next_id: 1000,
            stats: Stats::default(),
            trace: Vec::new(),
            healing: false,
            joined: (1..=sc_stores).collect(),
            pd: None,
            lost: BTreeSet::new(),
        };
        if w.sc.scheduling {
            w.pd = Some(SimPd::new(w.sc.planted.pd_never_repairs));
        }
        // Region 1 on the first stores: a config-file cluster's peers are its node ids; PD
        // draws ids for a PD-mode cluster's.
        let peers: Vec<Peer> = (1..=w.sc.stores as u64)
            .map(|s| Peer {
                id: match w.sc.mode {
                    Mode::Cluster => s,
                    Mode::Pd => w.draw_id(),
                },
                store_id: s,
                learner: false,
            })
            .collect();
        let one = Region {
            id: 1,
            start_key: Vec::new(),
            end_key: Vec::new(),
            epoch: Some(RegionEpoch {
                version: 1,
                conf_ver: 1,
            }),
            peers,
        };
        for i in 0..w.nodes.len() {
            w.start(i)?;
            if i < w.sc.stores {
                if let Some(s) = &mut w.nodes[i].store {
                    s.create_region(&one)
                        .map_err(|e| format!("s{} cannot create region 1: {e}", i + 1))?;
                }
            }
        }
        Ok(w)
    }

    fn draw_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
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
        let id = i as u64 + 1;
        let cfg = self.core_config(0);
        let engine = self.nodes[i].disk.open()?;
        engine
            .check_apply_settings(
                rdb_storage::ApplySettings {
                    dedup_window: self.sc.dedup_window,
                    history_revisions: self.sc.history_revisions,
                    history_ms: 0,
                },
                rdb_storage::Revisions::Counted,
            )
            .map_err(|e| format!("s{id} cannot start: {e}"))?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let store = StoreCore::open(engine, id, cfg, self.sc.dedup_window, &logger)
            .map_err(|e| format!("s{id} cannot start: {e}"))?;
        let n = &mut self.nodes[i];
        n.store = Some(store);
        n.restart_at = None;
        n.inbox.clear();
        n.requests.clear();
        Ok(())
    }

    fn note(&mut self, what: String) {
        self.stats.faults += 1;
        self.trace(what);
    }

    /// Records an event in the trace (a fault is [`World::note`]d).
    fn trace(&mut self, what: String) {
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
                    "no convergence within {HEAL_STEPS} steps after healing:\n{}",
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
                return Err(format!("final reads did not finish:\n{}", self.positions()));
            }
            self.step(false)?;
        }
        self.check()
    }

    fn step(&mut self, faults: bool) -> Result<(), String> {
        self.now += 1;
        if faults && self.now.is_multiple_of(STEPS_PER_TICK) {
            self.maybe_fault()?;
            for (i, n) in self.nodes.iter().enumerate() {
                if let Some(s) = &n.store {
                    self.wait_background(i + 1, s)?;
                }
            }
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].restart_at.is_some_and(|t| t <= self.now) {
                self.start(i)?;
            }
        }
        if self.heal_at != 0 && self.now >= self.heal_at {
            self.heal_at = 0;
            self.cut.clear();
            self.note("links healed".into());
        }
        self.deliver();
        // Once healing, only the final reads: random work would keep some client busy.
        self.drive_clients(!self.healing);
        if self.now.is_multiple_of(STEPS_PER_TICK) {
            self.tick_stores()?;
        }
        self.pd_turn();
        for i in 0..self.nodes.len() {
            self.run_store(i)?;
        }
        Ok(())
    }

    fn tick_stores(&mut self) -> Result<(), String> {
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
            if let Some(s) = &mut self.nodes[i].store {
                for _ in 0..ticks {
                    s.tick();
                }
            }
            if let Some(s) = &self.nodes[i].store {
                self.wait_background(i + 1, s)?;
            }
        }
        Ok(())
    }

    /// One turn of store `i`: its inputs in a random order, then `advance`, then what it
    /// sends and answers.
    fn run_store(&mut self, i: usize) -> Result<(), String> {
        if self.nodes[i].paused_until > self.now {
            return Ok(());
        }
        let Some(mut st) = self.nodes[i].store.take() else {
            return Ok(());
        };
        let r = self.turn(i, &mut st);
        self.nodes[i].store = Some(st);
        r
    }

    fn turn(&mut self, i: usize, st: &mut StoreCore) -> Result<(), String> {
        let sid = i + 1;
        let mut inbox = std::mem::take(&mut self.nodes[i].inbox);
        inbox.shuffle(&mut self.rng);
        for input in inbox {
            // A snapshot build reads the region on its own thread: done before anything else
            // changes the region, it reads the same state whatever the machine's load.
            self.wait_background(sid, st)?;
            match input {
                Input::Raft(m) => st
                    .step(m)
                    .map_err(|e| format!("s{sid} cannot step a message: {e}"))?,
                Input::SnapshotReport { region, to, ok } => st.report_snapshot(region, to, ok),
                Input::Unreachable { store } => st.report_unreachable_store(store),
                Input::Request {
                    client,
                    attempt,
                    req,
                } => {
                    let id = self.next_request;
                    self.next_request += 1;
                    let key = req.key.as_bytes();
                    let routed = match &req.write {
                        Some(cmd) => st.propose(
                            req.region,
                            &req.epoch,
                            &[key],
                            id,
                            prost::Message::encode_to_vec(cmd),
                        ),
                        None => st.read(req.region, &req.epoch, &[key], id),
                    };
                    match routed {
                        Ok(()) => {
                            let read = req.write.is_none().then_some(req.key);
                            self.nodes[i].requests.insert(id, (client, attempt, read));
                        }
                        Err(_) => self.reply(client, attempt, Rep::Region),
                    }
                }
            }
        }
        self.wait_background(sid, st)?;
        let out = st
            .advance()
            .map_err(|e| format!("s{sid} storage error: {e}"))?;
        self.stats.removed += out.destroyed.len();
        self.stats.merged += out.merged.len();
        for m in out.messages {
            self.send_raft(m);
        }
        for id in out.confirm {
            // What PD (or, in a config-file cluster, the join) tells: the region as the store
            // with its latest epoch has it; unless a region of a later range version covers
            // its range (PD dropped it from its map then), when PD answers with that region.
            // (The asking store is out of `nodes` during its turn: its own copy stands in when
            // no other store has the region.)
            let Some(r) = self.freshest(id).or_else(|| st.region(id).cloned()) else {
                continue;
            };
            match self.covering(&r) {
                Some(c) => st.confirm_covered(id, &c),
                None if self.freshest(id).is_some() => st.confirm_region(&r),
                None => {}
            }
        }
        for (req, _) in out.refused_reads {
            if let Some((client, attempt, _)) = self.nodes[i].requests.remove(&req) {
                self.reply(client, attempt, Rep::Region);
            }
        }
        for (region_id, id, answer) in out.replies {
            if let Ok(Answer::MembershipChanged { .. }) = &answer {
                self.stats.member_changes += 1;
            }
            let Some((client, attempt, read)) = self.nodes[i].requests.remove(&id) else {
                continue;
            };
            let rep = match answer {
                Ok(Answer::Written(r)) => Rep::Written(r),
                Ok(Answer::ReadReady { .. }) => {
                    // As the service reads: the key's newest version and the region's last
                    // revision, through one view.
                    let key = read.unwrap_or_default();
                    let (revs, v) = st
                        .engine()
                        .read_versioned(Space::Region(region_id), key.as_bytes(), 0)
                        .map_err(|e| format!("s{sid} cannot read: {e}"))?;
                    let value = v.map(|v| {
                        let m = v.meta;
                        let mut meta = KeyMeta {
                            create_revision: m.create_revision,
                            mod_revision: m.mod_revision,
                            version: m.version,
                        };
                        if self.sc.planted.reads_report_create_revision {
                            meta.mod_revision = meta.create_revision;
                        }
                        (String::from_utf8_lossy(&v.value).into_owned(), meta)
                    });
                    Rep::Read {
                        value,
                        revision: revs.last,
                    }
                }
                Ok(Answer::MembershipChanged { .. }) => continue,
                Err(Refusal::NotLeader { leader }) => {
                    Rep::NotLeader(st.store_of(region_id, leader))
                }
                Err(r) => Rep::Refused(r),
            };
            self.reply(client, attempt, rep);
        }
        self.wait_background(sid, st)
    }

    /// Waits until no snapshot of store `sid` is being built or installed on its own thread,
    /// so that what comes next finds it done whatever the machine's load: a seed replays
    /// alike.
    fn wait_background(&self, sid: usize, st: &StoreCore) -> Result<(), String> {
        let deadline = Instant::now() + BACKGROUND_BOUND;
        loop {
            let busy = st.region_ids().into_iter().any(|id| {
                st.core(id).is_some_and(|c| {
                    let s = c.replica().store();
                    s.install_running()
                        || s.snapshot_slot()
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .is_building()
                })
            });
            if !busy {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "s{sid}: a snapshot build or install took over {BACKGROUND_BOUND:?}"
                ));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Region `id` as the live store with its latest epoch has it.
    fn freshest(&self, id: u64) -> Option<Region> {
        self.nodes
            .iter()
            .filter_map(|n| n.store.as_ref()?.region(id))
            .max_by_key(|r| {
                let e = region::epoch(r);
                (e.conf_ver, e.version)
            })
            .cloned()
    }

    /// The region of the latest range version that covers `r`'s whole range at a later
    /// version than `r`'s, on a live store: what PD's map has instead of `r` once `r` merged.
    fn covering(&self, r: &Region) -> Option<Region> {
        let v = region::epoch(r).version;
        self.nodes
            .iter()
            .filter_map(|n| n.store.as_ref())
            .flat_map(|st| st.region_ids().into_iter().filter_map(|id| st.region(id)))
            .filter(|c| c.id != r.id && region::epoch(c).version > v && region::covers(c, r))
            .max_by_key(|c| region::epoch(c).version)
            .cloned()
    }

    /// Each region's highest commit index and highest last log index over the live stores.
    fn region_indexes(&self) -> BTreeMap<u64, (u64, u64)> {
        let mut out: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        for st in self.nodes.iter().filter_map(|n| n.store.as_ref()) {
            for id in st.region_ids() {
                let Some(c) = st.core(id) else { continue };
                let e = out.entry(id).or_default();
                e.0 = e.0.max(c.replica().commit_index());
                e.1 = e.1.max(c.replica().log_bounds().1);
            }
        }
        out
    }
}
