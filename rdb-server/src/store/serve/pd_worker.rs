//! The store's errands to PD, run off the Raft thread: registration, store and region
//! heartbeats, ids for splits, and the addresses of other stores (with backoff for one that
//! cannot be found).
//!
//! Store heartbeats go on the worker's own clock, from what the store task last told it
//! ([`TaskBeat`]), as TiKV's PD worker sends them: a task busy for seconds (a large batch of
//! applies, a slow disk) is still a live store, and PD must not count it gone and replace its
//! peers. A task that has not ticked for [`STALLED_AFTER`] is hung: the heartbeats stop, and PD
//! counts the store down and then gone, as a dead one (specs/015-scheduling).

use super::*;

/// A region as the PD client types it.
pub(super) fn pd_region(r: &Region) -> pdc::Region {
    pdc::Region::from(r.clone())
}

/// Work for PD, done off the Raft thread.
#[derive(Debug)]
pub(super) enum Job {
    /// This store's addresses (and its token), until PD has them.
    Register(pdc::Store, u64),
    /// Every store's addresses (at start).
    AllStores,
    /// The addresses of a store this one needs to send to.
    ResolveStore(u64),
    /// What PD knows of a region a leader named (see `StoreOutput::confirm`).
    ConfirmRegion {
        /// The region.
        id: u64,
        /// Its start key, if it is initialized here: when PD does not know the region, PD's
        /// region there tells whether it was merged away (see `StoreCore::confirm_covered`).
        start: Option<Vec<u8>>,
    },
    /// Ids for a split of `region` (at `version`) at `key`: one region id, one per peer.
    SplitIds {
        region: u64,
        version: u64,
        key: Vec<u8>,
        count: u32,
    },
    RegionHeartbeat {
        region: Region,
        leader: Peer,
        /// Approximate keys and bytes.
        size: (u64, u64),
    },
}

/// What the store task last told the worker about itself, at each tick; the worker's store
/// heartbeats read it.
#[derive(Debug, Default)]
pub(super) struct TaskBeat {
    /// When the task last ticked (none before its first tick).
    pub(super) ticked: Option<Instant>,
    /// Regions hosted here at that tick.
    pub(super) regions: u64,
}

/// The store task's beat, shared with the worker: the task writes it, the worker reads it.
pub(super) type SharedBeat = Arc<Mutex<TaskBeat>>;

/// A store task that has not ticked for this long is hung: the store sends no heartbeat, so
/// PD counts it down and then gone (its peers replaced). Well over the longest turns of a
/// loaded store (23 s under the repair bench's preload on an overloaded machine), well under
/// a person's wait.
pub(super) const STALLED_AFTER: Duration = Duration::from_secs(60);

/// How soon the worker looks again for the task's first tick.
const FIRST_BEAT_POLL: Duration = Duration::from_millis(100);

/// Whether a store whose task last ticked at `ticked` is alive at `now`: it ticked, less than
/// [`STALLED_AFTER`] ago.
pub(super) fn task_alive(ticked: Option<Instant>, now: Instant) -> bool {
    ticked.is_some_and(|t| now.saturating_duration_since(t) < STALLED_AFTER)
}

/// What the worker needs for the store's heartbeats.
pub(super) struct StoreBeats {
    pub(super) store_id: u64,
    /// For the disk figures (thread-safe reads: a file-system call and RocksDB properties).
    pub(super) engine: Engine,
    pub(super) beat: SharedBeat,
}

/// What comes back to the store task.
#[derive(Debug)]
pub(super) enum Event {
    Registered,
    /// A store's client and peer addresses.
    StoreAddr(pdc::Store),
    /// PD could not say where a store is (unreachable, or it does not know the store).
    NotResolved(u64),
    /// PD's region, for a region a leader named.
    RegionFound(Region),
    /// PD does not know region `.0`, hosted here; `.1` is PD's region over its start key.
    RegionCovered(u64, Region),
    SplitIds {
        region: u64,
        version: u64,
        key: Vec<u8>,
        first_id: u64,
    },
    /// A split check of a region.
    Measured(u64, Measure),
    /// PD's next scheduling step for a region this store leads (see `rdb_pd::schedule`).
    Operator(u64, pdc::OperatorStep),
}

/// How often a store asks PD for PD's own members: PD nodes are added and removed
/// (specs/016-pd-membership), and a store must still reach PD once every node it was started
/// with is gone.
const PD_MEMBERS_EVERY: Duration = Duration::from_secs(30);

pub(super) async fn pd_worker(
    pd: PdClient,
    store: StoreBeats,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    events: mpsc::UnboundedSender<Event>,
    logger: Logger,
) {
    let mut learn = tokio::time::interval(PD_MEMBERS_EVERY);
    learn.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beats = tokio::time::interval(STORE_HEARTBEAT_EVERY);
    beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Whether the last heartbeat was held back for a hung task (to warn once per stall).
    let mut stalled = false;
    loop {
        let job = tokio::select! {
            job = jobs.recv() => job,
            _ = beats.tick() => {
                let beat = lock(&store.beat);
                let (ticked, regions) = (beat.ticked, beat.regions);
                drop(beat);
                if !task_alive(ticked, Instant::now()) {
                    if !stalled && ticked.is_some() {
                        warn!(logger, "the store's task has not ticked lately: no store \
                            heartbeat, so PD counts this store down";
                            "silent_ms" => ticked.map_or(0, |t| t.elapsed().as_millis() as u64));
                    }
                    stalled = ticked.is_some();
                    if ticked.is_none() {
                        // The task is starting: its first heartbeat goes soon after its first
                        // tick, not a whole interval later.
                        beats.reset_after(FIRST_BEAT_POLL);
                    }
                    continue;
                }
                if stalled {
                    info!(logger, "the store's task ticks again: store heartbeats resume");
                    stalled = false;
                }
                let (capacity_bytes, available_bytes) =
                    store.engine.file_system_space().unwrap_or_default();
                let stats = StoreStats {
                    store_id: store.store_id,
                    region_count: regions,
                    capacity_bytes,
                    available_bytes,
                    used_bytes: store.engine.used_bytes(),
                };
                let (pd, logger) = (pd.clone(), logger.clone());
                tokio::spawn(async move {
                    if let Err(e) = pd.store_heartbeat(stats).await {
                        warn!(logger, "store heartbeat failed"; "error" => %e);
                    }
                });
                continue;
            }
            _ = learn.tick() => {
                // `get_members` adds every PD node's client address to the client's endpoints.
                let (pd, logger) = (pd.clone(), logger.clone());
                tokio::spawn(async move {
                    if let Err(e) = pd.get_members().await {
                        debug!(logger, "cannot list PD's members yet"; "error" => %e);
                    }
                });
                continue;
            }
        };
        let Some(job) = job else { break };
        let (pd, events, logger) = (pd.clone(), events.clone(), logger.clone());
        tokio::spawn(async move {
            match job {
                Job::Register(me, token) => match pd.put_store(me.clone(), token).await {
                    Ok(()) => {
                        info!(logger, "registered with PD"; "addr" => &me.address,
                            "peer_addr" => &me.peer_address);
                        let _ = events.send(Event::Registered);
                    }
                    Err(e) => debug!(logger, "cannot register with PD yet"; "error" => %e),
                },
                Job::AllStores => match pd.get_all_stores(true).await {
                    Ok(stores) => {
                        for s in stores {
                            let _ = events.send(Event::StoreAddr(s));
                        }
                    }
                    Err(e) => debug!(logger, "cannot list the stores yet"; "error" => %e),
                },
                Job::ResolveStore(id) => match pd.get_store(id).await {
                    Ok(Some(s)) => {
                        let _ = events.send(Event::StoreAddr(s));
                    }
                    Ok(None) => {
                        warn!(logger, "PD does not know a store"; "store" => id);
                        let _ = events.send(Event::NotResolved(id));
                    }
                    Err(e) => {
                        debug!(logger, "cannot resolve a store"; "store" => id, "error" => %e);
                        let _ = events.send(Event::NotResolved(id));
                    }
                },
                Job::ConfirmRegion { id, start } => match pd.get_region_by_id(id).await {
                    Ok(Some(info)) => {
                        let _ = events.send(Event::RegionFound(info.region.into()));
                    }
                    Ok(None) => match start {
                        // Hosted here, unknown to PD: merged away, or too new to be reported
                        // yet. PD's region over its start key tells which.
                        Some(key) => match pd.get_region(key).await {
                            Ok(Some(info)) => {
                                let _ = events.send(Event::RegionCovered(id, info.region.into()));
                            }
                            Ok(None) => {}
                            Err(e) => debug!(logger, "cannot ask PD about a region";
                                "region" => id, "error" => %e),
                        },
                        None => debug!(logger, "PD does not know a region a leader named";
                            "region" => id),
                    },
                    Err(e) => debug!(logger, "cannot ask PD about a region"; "region" => id,
                        "error" => %e),
                },
                Job::SplitIds {
                    region,
                    version,
                    key,
                    count,
                } => match pd.alloc_ids(count).await {
                    Ok(first_id) => {
                        let _ = events.send(Event::SplitIds {
                            region,
                            version,
                            key,
                            first_id,
                        });
                    }
                    Err(e) => {
                        warn!(logger, "no ids for a split"; "region" => region, "error" => %e)
                    }
                },
                Job::RegionHeartbeat {
                    region,
                    leader,
                    size: (keys, bytes),
                } => {
                    let id = region.id;
                    let leader = pdc::Peer {
                        id: leader.id,
                        store_id: leader.store_id,
                        learner: leader.learner,
                    };
                    match pd
                        .region_heartbeat(pd_region(&region), leader, bytes, keys)
                        .await
                    {
                        Ok(Some(step)) => {
                            let _ = events.send(Event::Operator(id, step));
                        }
                        Ok(None) => {}
                        Err(e) => {
                            warn!(logger, "region heartbeat failed"; "region" => id, "error" => %e)
                        }
                    }
                }
            }
        });
    }
}

/// When to ask PD where a store is: when a message needs a store with no address here, and
/// again when the transport cannot reach one (it may have restarted elsewhere), at most once
/// per backoff (doubling from `RESOLVE_MIN` to `RESOLVE_MAX` while nothing changes).
#[derive(Default)]
pub(super) struct Resolver {
    /// Per store: when it was last asked about, and the wait before asking again.
    asked: HashMap<u64, (Instant, Duration)>,
    /// Stores asked about with no answer yet.
    in_flight: BTreeSet<u64>,
}

pub(super) const RESOLVE_MIN: Duration = Duration::from_millis(500);
pub(super) const RESOLVE_MAX: Duration = Duration::from_secs(10);

impl Resolver {
    /// Whether to ask about `store` now; if so, it counts as asked.
    pub(super) fn should_ask(&mut self, store: u64, now: Instant) -> bool {
        if self.in_flight.contains(&store) {
            return false;
        }
        let (at, wait) = self.asked.entry(store).or_insert((now, Duration::ZERO));
        if *wait > Duration::ZERO && now.duration_since(*at) < *wait {
            return false;
        }
        *at = now;
        *wait = (*wait * 2).clamp(RESOLVE_MIN, RESOLVE_MAX);
        self.in_flight.insert(store);
        true
    }

    /// PD answered about `store`; `moved`: with an address not known before, so the next
    /// failure may be asked about soon again.
    pub(super) fn answered(&mut self, store: u64, moved: bool) {
        self.in_flight.remove(&store);
        if moved {
            self.asked.remove(&store);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_is_alive_from_its_first_tick_until_it_stalls() {
        let now = Instant::now();
        assert!(!task_alive(None, now), "before its first tick");
        assert!(task_alive(Some(now), now));
        // A turn of seconds (a large apply, a slow disk) is not a hung task.
        let busy = now + Duration::from_secs(12);
        assert!(task_alive(Some(now), busy));
        let hung = now + STALLED_AFTER;
        assert!(
            !task_alive(Some(now), hung),
            "a task silent for STALLED_AFTER is hung"
        );
    }
}
