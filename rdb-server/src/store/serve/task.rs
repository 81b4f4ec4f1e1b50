//! The task that owns a store's regions: it steps peers' messages, answers clients, ticks,
//! reports to PD through the worker, and checks regions for splits.

use super::*;

/// A client waiting for an answer.
pub(super) enum Waiter {
    /// A write, and when it was proposed.
    Write(
        oneshot::Sender<Result<CommandResult, RequestError>>,
        Instant,
    ),
    /// A read of region `1`, answered with the region's meta.
    Read(oneshot::Sender<Result<Region, RequestError>>, u64),
    /// A split this store proposed (region, when).
    Split(u64),
    /// A membership change PD asked for (region, what).
    Operator(u64, String),
    /// A membership change of a region: its log index and the membership it led to.
    Change(
        oneshot::Sender<Result<(u64, crate::raft_core::Membership), RequestError>>,
        u64,
    ),
}

/// The task that owns a store's regions; see the module docs.
pub(super) struct StoreTask {
    pub(super) core: StoreCore,
    pub(super) inbox: Inbox,
    pub(super) events: mpsc::UnboundedReceiver<Event>,
    /// For results of work done off this thread (region measures).
    pub(super) events_tx: mpsc::UnboundedSender<Event>,
    pub(super) jobs: mpsc::UnboundedSender<Job>,
    pub(super) transport: GrpcTransport,
    pub(super) addrs: Arc<Mutex<HashMap<u64, String>>>,
    pub(super) waiters: HashMap<RequestId, Waiter>,
    pub(super) next_request: RequestId,
    pub(super) tick: Duration,
    pub(super) split: SplitConfig,
    /// The latest size (keys, bytes) of each region led here, for PD.
    pub(super) sizes: HashMap<u64, (u64, u64)>,
    /// The last exact count of each region led here.
    pub(super) counted: HashMap<u64, Counted>,
    /// Split checks made so far.
    pub(super) checks: u64,
    /// Regions with a split in flight, since when.
    pub(super) splitting: HashMap<u64, Instant>,
    /// Regions this store led at the last check.
    pub(super) led: BTreeSet<u64>,
    pub(super) last_split_check: Instant,
    pub(super) last_region_heartbeat: Instant,
    /// What the PD worker's store heartbeats report, written at each tick.
    pub(super) beat: pd_worker::SharedBeat,
    /// This store as PD should know it.
    pub(super) me: pdc::Store,
    /// The store's token, which PD needs to accept a change of its addresses.
    pub(super) token: u64,
    /// Whether PD acknowledged this store's addresses since it started.
    pub(super) registered: bool,
    pub(super) last_register: Option<Instant>,
    /// When to ask PD for other stores' addresses.
    pub(super) resolver: Resolver,
    /// A log-file compaction running off this thread.
    pub(super) compacting: Option<std::thread::JoinHandle<()>>,
    /// Durable-index records, warnings and gauges (see [`Observer`]).
    pub(super) observer: Observer,
    /// A config-file node: its cluster, which stands in for PD (see [`config_node`]).
    pub(super) statics: Option<StaticCluster>,
    /// Linearizable reads that arrived this turn (they share one ReadIndex round per region).
    pub(super) reads_this_turn: u64,
    /// The highest stamp this store gave a write it proposed (PD mode; see
    /// [`crate::service::stamps::StampRange::take`]).
    pub(super) stamped: u64,
    /// A clean stop was asked for: the loop ends after this turn's messages.
    pub(super) stopping: bool,
    pub(super) logger: Logger,
}

impl StoreTask {
    pub(super) async fn run(mut self) {
        let mut clock = crate::router::RaftClock::new(self.tick);
        while !self.stopping {
            tokio::select! {
                biased;
                // Only a wake-up: the tick itself goes by the clock, below.
                _ = clock.wake() => {}
                Some(c) = self.inbox.control.recv() => self.control(c),
                Some(m) = self.inbox.raft.recv() => self.step(*m),
                Some(e) = self.events.recv() => self.event(e),
                m = self.inbox.client.recv() => {
                    let Some(m) = m else { break };
                    self.handle(m);
                }
            }
            // A tick is due by the clock, whatever woke the task (see `RaftClock`).
            if clock.due() {
                self.on_tick();
            }
            let turn = Instant::now();
            // Fault point `store-turn`: a turn held up (tests stall a store's task with it).
            fail::fail_point!("store-turn");
            while let Ok(c) = self.inbox.control.try_recv() {
                self.control(c);
            }
            for _ in 0..4096 {
                match self.inbox.raft.try_recv() {
                    Ok(m) => self.step(*m),
                    Err(_) => break,
                }
            }
            for _ in 0..4096 {
                match self.inbox.client.try_recv() {
                    Ok(m) => self.handle(m),
                    Err(_) => break,
                }
            }
            if self.stopping {
                // What this turn stepped is dropped unpersisted, as in a crash: none of it was
                // acknowledged.
                break;
            }
            if self.reads_this_turn > 0 {
                let m = crate::metrics::metrics();
                m.read_rounds.inc();
                m.reads_per_round.observe(self.reads_this_turn as f64);
                self.reads_this_turn = 0;
            }
            // Each message goes as soon as raft-rs lets it (see `StoreCore::advance_sending`);
            // one for a store with no address here yet comes back, for `dispatch`.
            let transport = &mut self.transport;
            let advanced = self.core.advance_sending(&mut |m| {
                if !transport.knows(m.to_store) {
                    return Some(m);
                }
                transport.send_region(m.to_store, m.region_id, m.msg);
                None
            });
            match advanced {
                Ok(out) => {
                    self.dispatch(out);
                    self.observer.turn(turn.elapsed(), &self.logger);
                }
                Err(e) => {
                    crit!(self.logger, "storage failure, stopping the store"; "error" => %e);
                    crate::logging::fatal_exit(&format!("fatal storage error: {e}"));
                }
            }
        }
        crate::upkeep::join_chore(self.compacting.take());
        self.observer.join();
    }

    fn step(&mut self, m: crate::router::PeerMsg) {
        let to_store = self.core.store_id();
        let refused = self.core.refused_messages();
        let stepped = self.core.step(RegionMessage {
            region_id: m.region_id,
            from_store: m.from,
            to_store,
            epoch: RegionEpoch::default(),
            msg: m.msg,
        });
        if let Err(e) = stepped {
            crit!(self.logger, "storage failure, stopping the store"; "error" => %e);
            crate::logging::fatal_exit(&format!("fatal storage error: {e}"));
        }
        if self.core.refused_messages() > refused {
            crate::metrics::metrics()
                .peer_messages_refused
                .with_label_values(&["raft"])
                .inc();
        }
    }

    /// Asks PD where `store` is, unless it was asked lately (see [`Resolver`]). A config-file
    /// node knows every member's address from its records already.
    fn resolve(&mut self, store: u64) {
        if self.statics.is_some() {
            return;
        }
        if store != self.core.store_id() && self.resolver.should_ask(store, Instant::now()) {
            let _ = self.jobs.send(Job::ResolveStore(store));
        }
    }

    fn control(&mut self, c: Control) {
        match c {
            Control::SnapshotSent { region_id, to, ok } => {
                self.core.report_snapshot(region_id, to, ok);
            }
            Control::Unreachable { to } => {
                self.core.report_unreachable_store(to);
                // It may have restarted on another address.
                self.resolve(to);
            }
            // A config-file node removed from its cluster stops for good; a store's peers are
            // removed per region (see `StoreCore::confirm_region`).
            Control::Removed { by } if self.statics.is_some() => {
                self.stop_removed(&format!("node {by} says so"));
            }
            Control::Removed { .. } => {}
            Control::Stop => self.stopping = true,
        }
    }

    fn event(&mut self, e: Event) {
        match e {
            Event::Registered => self.registered = true,
            Event::StoreAddr(s) => {
                let moved = !self.transport.knows_at(s.id, s.peer_addr())
                    || lock(&self.addrs).get(&s.id) != Some(&s.address);
                self.resolver.answered(s.id, moved);
                if s.id != self.core.store_id() && moved {
                    self.transport.set_store(s.id, s.peer_addr());
                    let recorded =
                        self.core
                            .engine()
                            .record_store_addr(s.id, s.peer_addr(), &s.address);
                    if let Err(e) = recorded {
                        warn!(self.logger, "cannot record a store's address"; "store" => s.id,
                            "error" => %e);
                    }
                }
                lock(&self.addrs).insert(s.id, s.address);
            }
            Event::NotResolved(id) => self.resolver.answered(id, false),
            Event::RegionFound(region) => self.core.confirm_region(&region),
            Event::RegionCovered(id, covering) => self.core.confirm_covered(id, &covering),
            Event::Measured(region, measure) => self.measured(region, measure),
            Event::SplitIds {
                region,
                version,
                key,
                first_id,
            } => self.propose_split(region, version, key, first_id),
            Event::Operator(region, step) => self.run_operator(region, step),
        }
    }

    pub(super) fn request_id(&mut self, w: Waiter) -> RequestId {
        let id = self.next_request;
        self.next_request += 1;
        self.waiters.insert(id, w);
        id
    }

    /// The region a request goes to: the one it names, or the one holding its first key.
    fn locate(&self, route: &RegionRoute) -> Result<(u64, RegionEpoch), RequestError> {
        let id = if route.region_id != 0 {
            route.region_id
        } else if route.keys.is_empty() {
            // A request of no key (a replica check) names its region: a config-file node's
            // is region 1, and a store has no default.
            match self.default_region(0) {
                0 => {
                    return Err(RequestError::InvalidArgument(
                        "this is a PD-mode store: a replica check is per region; name the \
                         region in the request's context"
                            .into(),
                    ))
                }
                id => id,
            }
        } else {
            let key = route.keys.first().map(Vec::as_slice).unwrap_or_default();
            self.core.region_for_key(key).map(|r| r.id).ok_or_else(|| {
                RequestError::RegionNotFound(format!(
                    "store {} hosts no region holding the key",
                    self.core.store_id()
                ))
            })?
        };
        let current = self.core.region(id).map(region::epoch).ok_or_else(|| {
            RequestError::RegionNotFound(format!(
                "store {} hosts no peer of region {id}",
                self.core.store_id()
            ))
        })?;
        Ok((id, route.epoch.unwrap_or(current)))
    }

    /// The region a membership or leadership request without one is for: a config-file
    /// node's one region; a store has no default.
    fn default_region(&self, region_id: u64) -> u64 {
        match (region_id, &self.statics) {
            (0, Some(_)) => config_node::CONFIG_REGION,
            (id, _) => id,
        }
    }

    fn handle(&mut self, msg: Msg) {
        let msg = match msg {
            Msg::TransferLeader { region_id, to, tx } => Msg::TransferLeader {
                region_id: self.default_region(region_id),
                to,
                tx,
            },
            Msg::ChangeMembers {
                region_id,
                steps,
                added,
                tx,
            } => Msg::ChangeMembers {
                region_id: self.default_region(region_id),
                steps,
                added,
                tx,
            },
            Msg::Members { region_id, tx } => Msg::Members {
                region_id: self.default_region(region_id),
                tx,
            },
            m => m,
        };
        match msg {
            // `StoreCore::propose` and `read` check the keys and epoch themselves.
            Msg::RegionPropose {
                route,
                mut data,
                stamp,
                tx,
            } => {
                let (id, epoch) = match self.locate(&route) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                if let Some(range) = stamp {
                    // Stamps rise in the order writes are proposed, so along each region's log.
                    let Some(stamp) = range.take(&mut self.stamped) else {
                        let _ = tx.send(Ok(CommandResult::StaleStamp { last: self.stamped }));
                        return;
                    };
                    crate::service::stamps::append_stamp(&mut data, stamp);
                }
                let keys: Vec<&[u8]> = route.keys.iter().map(Vec::as_slice).collect();
                let req = self.request_id(Waiter::Write(tx, Instant::now()));
                if let Err(e) = self.core.propose(id, &epoch, &keys, req, data) {
                    if let Some(Waiter::Write(tx, _)) = self.waiters.remove(&req) {
                        let _ = tx.send(Err(region_error(e)));
                    }
                }
            }
            Msg::RegionRead {
                route,
                linearizable,
                tx,
            } => {
                let (id, epoch) = match self.locate(&route) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let keys: Vec<&[u8]> = route.keys.iter().map(Vec::as_slice).collect();
                if !linearizable {
                    if let Err(e) = self.core.check(id, &epoch, &keys) {
                        let _ = tx.send(Err(region_error(e)));
                        return;
                    }
                    if self.core.is_installing(id) {
                        // Its data is being replaced: the leader's store serves the read.
                        let leader = self.core.core(id).map_or(0, |c| c.replica().leader_id());
                        let e = match self.refusal(id, Refusal::NotLeader { leader }) {
                            e @ RequestError::NotLeader(Some(_)) => e,
                            _ => RequestError::Unavailable(format!(
                                "region {id} is installing a snapshot on this store"
                            )),
                        };
                        let _ = tx.send(Err(e));
                        return;
                    }
                    let meta = self.core.region(id).cloned();
                    let _ =
                        tx.send(meta.ok_or_else(|| RequestError::RegionNotFound(id.to_string())));
                    return;
                }
                self.reads_this_turn += 1;
                let req = self.request_id(Waiter::Read(tx, id));
                if let Err(e) = self.core.read(id, &epoch, &keys, req) {
                    if let Some(Waiter::Read(tx, _)) = self.waiters.remove(&req) {
                        let _ = tx.send(Err(region_error(e)));
                    }
                }
            }
            Msg::Status { tx } => {
                let _ = tx.send(self.status());
            }
            Msg::Propose { tx, .. } => {
                let _ = tx.send(Err(not_routed()));
            }
            Msg::Read { tx } => {
                let _ = tx.send(Err(not_routed()));
            }
            Msg::TransferLeader {
                region_id: 0, tx, ..
            } => {
                let _ = tx.send(Err(no_region_named()));
            }
            Msg::ChangeMembers {
                region_id: 0, tx, ..
            } => {
                let _ = tx.send(Err(no_region_named()));
            }
            Msg::Members { region_id: 0, tx } => {
                let _ = tx.send(Err(no_region_named()));
            }
            Msg::TransferLeader { region_id, to, tx } => {
                let r = match self.core.transfer_leader(region_id, to) {
                    Ok(()) => Ok(()),
                    Err(RequestRefused::Region(e)) => Err(region_error(e)),
                    Err(RequestRefused::Core(r)) => Err(self.refusal(region_id, r)),
                };
                let _ = tx.send(r);
            }
            Msg::ChangeMembers {
                region_id,
                steps,
                mut added,
                tx,
            } => {
                if self.statics.is_some() {
                    match self.check_node_change(&steps, &mut added) {
                        Ok(()) => {}
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
                let req = self.request_id(Waiter::Change(tx, region_id));
                if let Err(e) = self.core.change_members(region_id, req, &steps, &added) {
                    if let Some(Waiter::Change(tx, _)) = self.waiters.remove(&req) {
                        let _ = tx.send(Err(region_error(e)));
                    }
                }
            }
            Msg::Members { region_id, tx } => {
                let _ = tx.send(self.members(region_id));
            }
            Msg::MergeRegion { source, target, tx } => {
                let req = self.request_id(Waiter::Write(tx, Instant::now()));
                if let Err(e) = self.core.prepare_merge(source, target, req) {
                    let e = match e {
                        RequestRefused::Region(e) => region_error(e),
                        RequestRefused::Core(r) => self.refusal(source, r),
                    };
                    if let Some(Waiter::Write(tx, _)) = self.waiters.remove(&req) {
                        let _ = tx.send(Err(e));
                    }
                }
            }
        }
    }

    /// A refusal from a region's core, as the client sees it: a leader hint names the
    /// leader's store and address.
    fn refusal(&self, region: u64, r: Refusal) -> RequestError {
        match r {
            Refusal::NotLeader { leader } => {
                let hint = self.core.store_of(region, leader).and_then(|store| {
                    let addr = lock(&self.addrs).get(&store).cloned()?;
                    Some(LeaderHint {
                        id: store,
                        addr,
                        peer_id: leader,
                    })
                });
                match hint {
                    Some(h) => RequestError::NotLeader(Some(h)),
                    None => {
                        RequestError::Unavailable(format!("region {region} has no known leader"))
                    }
                }
            }
            Refusal::Unavailable(m) => RequestError::Unavailable(m),
            Refusal::Indeterminate(m) => RequestError::Indeterminate(m.into()),
            Refusal::Rejected(m) if m.starts_with("key not in region") => {
                let regions = self.core.region(region).cloned().into_iter().collect();
                RequestError::KeyNotInRegion(m, regions)
            }
            // Proposed before its region prepared a merge, applied after: nothing applied.
            Refusal::Rejected(m) if m.starts_with("region merging") => RequestError::Unavailable(m),
            Refusal::Rejected(m) => RequestError::InvalidArgument(m),
        }
    }

    fn dispatch(&mut self, out: crate::store::StoreOutput) {
        for m in out.messages {
            if self.transport.knows(m.to_store) {
                self.transport.send_region(m.to_store, m.region_id, m.msg);
                continue;
            }
            if m.msg.get_msg_type() == raft::prelude::MessageType::MsgSnapshot {
                // Raft sends that peer nothing else until it hears how the snapshot went.
                self.core.report_snapshot(m.region_id, m.msg.to, false);
            }
            self.resolve(m.to_store);
        }
        for region in out.confirm {
            if self.statics.is_none() {
                let start = self.core.region(region).map(|m| m.start_key.clone());
                let _ = self.jobs.send(Job::ConfirmRegion { id: region, start });
            } else if region == config_node::CONFIG_REGION {
                let me = self.core.store_id();
                self.core.confirm_region(&StaticCluster::vouch(me));
            }
        }
        // Reads whose region changed while they waited (StoreCore::read).
        for (id, e) in out.refused_reads {
            if let Some(Waiter::Read(tx, _)) = self.waiters.remove(&id) {
                let _ = tx.send(Err(region_error(e)));
            }
        }
        for (region, id, answer) in out.replies {
            let Some(w) = self.waiters.remove(&id) else {
                continue;
            };
            match (w, answer) {
                (Waiter::Write(tx, proposed), Ok(Answer::Written(r))) => {
                    crate::metrics::metrics()
                        .propose_apply_seconds
                        .observe(proposed.elapsed().as_secs_f64());
                    let _ = tx.send(Ok(r));
                }
                (Waiter::Write(tx, _), Err(r)) => {
                    let _ = tx.send(Err(self.refusal(region, r)));
                }
                (Waiter::Read(tx, id), Ok(Answer::ReadReady { .. })) => {
                    let meta = self.core.region(id).cloned();
                    let _ =
                        tx.send(meta.ok_or_else(|| RequestError::RegionNotFound(id.to_string())));
                }
                (Waiter::Read(tx, _), Err(r)) => {
                    let _ = tx.send(Err(self.refusal(region, r)));
                }
                (Waiter::Operator(r, what), answer) => match answer {
                    Ok(Answer::MembershipChanged { index, .. }) => {
                        info!(self.logger, "operator applied"; "region" => r, "step" => &what,
                            "index" => index);
                        // PD learns at once, and answers with the operator's next step.
                        if self.core.core(r).is_some_and(|c| c.replica().is_leader()) {
                            self.heartbeat(r);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        info!(self.logger, "operator not applied"; "region" => r, "step" => &what,
                            "why" => %self.refusal(r, e))
                    }
                },
                (Waiter::Split(r), answer) => {
                    self.splitting.remove(&r);
                    match answer {
                        Ok(a) => info!(self.logger, "split applied"; "region" => r, "answer" => ?a),
                        Err(e) => warn!(self.logger, "split refused"; "region" => r, "why" => ?e),
                    }
                }
                (Waiter::Change(tx, _), Ok(Answer::MembershipChanged { index, membership })) => {
                    let _ = tx.send(Ok((index, membership)));
                }
                (Waiter::Change(tx, _), Err(r)) => {
                    let _ = tx.send(Err(self.refusal(region, r)));
                }
                (w, Ok(other)) => {
                    // Never expected: each request kind gets its own kind of answer.
                    warn!(self.logger, "answer does not fit the request"; "region" => region,
                        "answer" => ?other);
                    let e = || {
                        RequestError::Unavailable(
                            "the store gave this request another kind of answer; retry".into(),
                        )
                    };
                    match w {
                        Waiter::Write(tx, _) => {
                            let _ = tx.send(Err(e()));
                        }
                        Waiter::Read(tx, _) => {
                            let _ = tx.send(Err(e()));
                        }
                        Waiter::Change(tx, _) => {
                            let _ = tx.send(Err(e()));
                        }
                        Waiter::Split(_) | Waiter::Operator(..) => {}
                    }
                }
            }
        }
        if self.compacting.as_ref().is_some_and(|h| h.is_finished()) {
            self.compacting = None;
        }
        if let Some(&(region, below)) = out.compacted.first() {
            if self.compacting.is_none() {
                if let Some(engine) = self.core.region_engine(region) {
                    self.compacting = std::thread::Builder::new()
                        .name("log-compact".into())
                        .spawn(move || engine.compact_log_files(below))
                        .ok();
                }
            }
        }
        for &id in &out.created {
            // A new region's stores may be new to this one; its leader reports it at once.
            if let Some(meta) = self.core.region(id).cloned() {
                for p in &meta.peers {
                    if !self.transport.knows(p.store_id) {
                        self.resolve(p.store_id);
                    }
                }
            }
            self.led.remove(&id);
        }
        if !out.created.is_empty() {
            self.report_leadership(true);
        }
        // PD learns a region's new peers at once: a store PD placed a new peer on asks PD
        // before the leader's first message may create it.
        // A merge's target reports its new range at once: PD drops the source it covers.
        for &id in &out.merged {
            if self.core.core(id).is_some_and(|c| c.replica().is_leader()) {
                self.heartbeat(id);
            }
        }
        for &id in &out.membership_changed {
            if self.statics.is_some() {
                self.reload_members(id);
            } else if self.core.core(id).is_some_and(|c| c.replica().is_leader()) {
                self.heartbeat(id);
            }
        }
        if self.statics.is_some() && !out.destroyed.is_empty() {
            self.stop_removed("it applied its own removal");
        }
        for &id in &out.destroyed {
            self.led.remove(&id);
            self.sizes.remove(&id);
            self.counted.remove(&id);
            // Requests waiting on the removed peer: the client retries at the region's leader.
            let gone: Vec<RequestId> = self
                .waiters
                .iter()
                .filter(|(_, w)| matches!(w, Waiter::Read(_, r) | Waiter::Change(_, r) if *r == id))
                .map(|(&k, _)| k)
                .collect();
            for k in gone {
                let e = RequestError::RegionNotFound(format!(
                    "region {id}'s peer on store {} was removed",
                    self.core.store_id()
                ));
                match self.waiters.remove(&k) {
                    Some(Waiter::Read(tx, _)) => {
                        let _ = tx.send(Err(e));
                    }
                    Some(Waiter::Change(tx, _)) => {
                        let _ = tx.send(Err(e));
                    }
                    _ => {}
                }
            }
        }
    }

    /// Region `id`'s membership as its peer here applied it, with each peer's store and that
    /// store's client address (the leader adds every peer's progress).
    fn members(&self, id: u64) -> Result<MembersView, RequestError> {
        let (Some(core), Some(meta)) = (self.core.core(id), self.core.region(id)) else {
            return Err(region_error(RegionError::NotFound(id)));
        };
        let r = core.replica();
        let addrs = lock(&self.addrs);
        // A config-file node's members are named by their addresses, from its records.
        let stores = if self.statics.is_some() {
            Vec::new()
        } else {
            meta.peers
                .iter()
                .map(|p| {
                    let addr = addrs.get(&p.store_id).cloned().unwrap_or_default();
                    (p.id, p.store_id, addr)
                })
                .collect()
        };
        Ok(MembersView {
            node_id: r.id(),
            leader_id: r.leader_id(),
            commit_index: r.commit_index(),
            membership: crate::raft_core::Membership::from(&r.conf_state()),
            progress: r.progress(),
            stores,
        })
    }
}

pub(super) fn region_error(e: RegionError) -> RequestError {
    match e {
        RegionError::NotFound(id) => {
            RequestError::RegionNotFound(format!("this store hosts no peer of region {id}"))
        }
        RegionError::Invalid(m) => RequestError::InvalidArgument(m),
        RegionError::EpochNotMatch { current } => RequestError::EpochNotMatch(
            format!(
                "region epoch changed; the region is now version {}",
                current.first().map_or(0, |r| region::epoch(r).version)
            ),
            current,
        ),
        RegionError::Merging { region, target } => RequestError::Unavailable(format!(
            "region {region} is merging into region {target}; retry"
        )),
        RegionError::KeyNotInRegion { key, region } => RequestError::KeyNotInRegion(
            format!(
                "key {:?} is not in region {}",
                String::from_utf8_lossy(&key),
                region.id
            ),
            vec![*region],
        ),
    }
}

/// A membership or leadership request to a store that names no region.
fn no_region_named() -> RequestError {
    RequestError::InvalidArgument(
        "this is a store of a PD-mode cluster, where each region has its own members and \
         leader: name one (rdb-cli --pd PD member list --region ID)"
            .into(),
    )
}

/// What a store answers the requests of a one-group process (`Msg::Propose`, `Msg::Read`),
/// which its client service never sends.
pub(super) fn not_routed() -> RequestError {
    RequestError::InvalidArgument(
        "a request of a process of one Raft group (a PD node) reached a store: it names no \
         region or key"
            .into(),
    )
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
