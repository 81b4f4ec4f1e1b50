//! A store's turn: every region's Ready up to its write, one fsync of the WAL for all of them,
//! then every Ready's second half; regions created, merged, removed and installing are settled
//! before the turn ends (see the module docs of `store`).

use super::*;

impl StoreCore {
    /// Runs a turn for every region: each Ready up to its write, one fsync of the WAL if any
    /// write needs it, then each Ready's second half (messages that depend on the writes,
    /// apply, answers). Regions created by splits start here, before the turn ends. A region
    /// whose Ready brings a snapshot starts installing it in the background and takes part in
    /// no turn until the install is over (see the module docs).
    ///
    /// A storage error is returned and must end the store: it cannot persist.
    pub fn advance(&mut self) -> Result<StoreOutput, CoreError> {
        self.advance_sending(&mut Some)
    }

    /// [`StoreCore::advance`], handing each message to `send` as soon as raft-rs lets it go,
    /// as a node of one group sends them: a leader's appends before the turn's write (so that
    /// followers write their copy while the leader writes its own: a leader counts its own
    /// entries only once persisted), and a follower's answers right after the write, before
    /// the entries are applied. A message `send` gives back is returned in
    /// [`StoreOutput::messages`].
    pub fn advance_sending(
        &mut self,
        send: &mut dyn FnMut(RegionMessage) -> Option<RegionMessage>,
    ) -> Result<StoreOutput, CoreError> {
        let mut out = StoreOutput::default();
        if self.garbage.first().is_some_and(|g| g.0 <= self.ticks) {
            let ticks = self.ticks;
            let (due, later) = std::mem::take(&mut self.garbage)
                .into_iter()
                .partition::<Vec<_>, _>(|g| g.0 <= ticks);
            self.garbage = later;
            for (_, g) in due {
                self.collect(&g)?;
            }
        }
        let mut pending = Vec::with_capacity(self.regions.len());
        let mut owed = false;
        let mut merged = Vec::new();
        let ids: Vec<u64> = self.regions.keys().copied().collect();
        for id in ids {
            let Some(r) = self.regions.get_mut(&id) else {
                // A merge earlier in this turn took this region over.
                continue;
            };
            let RegionPeer { core, heard, .. } = r;
            let mut outbox = outbox(id, self.store_id, core, heard, send, &mut out.messages);
            let p = core.begin_advance(&mut outbox, false)?;
            if p.as_ref().is_some_and(|p| p.needs_sync()) {
                owed = true;
                out.regions_synced += 1;
            }
            pending.push((id, p));
            self.take_merged(id, &mut merged);
        }
        // Every region's entries and hard states of this turn, in one write: synced if any
        // region needs it (new entries, term or vote), before anything depending on them.
        let started = std::time::Instant::now();
        let wrote = self
            .engine
            .write_appends(&self.appends, owed)
            .map_err(CoreError::storage)?;
        if wrote && owed {
            crate::metrics::metrics().observe_fsync(started.elapsed());
            out.synced = true;
        }
        let mut created = Vec::new();
        let mut removed = Vec::new();
        for (id, p) in pending {
            let Some(r) = self.regions.get_mut(&id) else {
                continue;
            };
            let RegionPeer { core, heard, .. } = &mut *r;
            let mut outbox = outbox(id, self.store_id, core, heard, send, &mut out.messages);
            let o = core.finish_advance(p, &mut outbox)?;
            if o.snapshot_applied {
                info!(self.logger, "region installed a snapshot"; "region" => id,
                    "applied" => core.replica().applied_index());
            }
            out.replies
                .extend(o.replies.into_iter().map(|(rid, a)| (id, rid, a)));
            if let Some(below) = o.compacted_to {
                out.compacted.push((id, below));
            }
            let led = r.core.replica().is_leader();
            for new in r.core.app_mut().take_splits() {
                created.push((new, led));
            }
            if o.membership_changed {
                out.membership_changed.push(id);
            }
            if o.removed {
                removed.push(id);
            }
            self.take_merged(id, &mut merged);
        }
        self.finish_merges(merged, &mut out)?;
        removed.extend(std::mem::take(&mut self.stale));
        removed.dedup();
        for id in removed {
            if self.regions.contains_key(&id) {
                self.destroy(id)?;
                out.destroyed.push(id);
            }
        }
        // A snapshot stepped so far is being installed (it stays pending, its range refused to
        // others, until the install removes its file), was installed, or raft-rs ignored it as
        // stale: then it is no longer pending, and its file goes. (A copy of it received again
        // meanwhile is checked for before it is stepped.)
        for (id, (meta, desc)) in std::mem::take(&mut self.pending_snapshots) {
            let installing = self
                .regions
                .get(&id)
                .and_then(|r| r.core.replica().installing_snapshot());
            if installing == Some((desc.index, desc.term)) {
                self.pending_snapshots.insert(id, (meta, desc));
                continue;
            }
            let dir = crate::transport::region_snap_dir(&self.engine.snap_dir(), id);
            let _ = std::fs::remove_file(desc.path_in(&dir));
        }
        out.confirm = std::mem::take(&mut self.pending_asks);
        self.recheck_reads(&mut out);
        self.log_driver_replies(&mut out);
        for (id, led) in created {
            match self.regions.get(&id) {
                // Initialized already, or being initialized, by its leader's snapshot: the split
                // left it alone. (A snapshot is refused while a region hosted here overlaps it,
                // so a parent here cannot apply a split over one being installed; this holds
                // even so.)
                Some(r)
                    if r.core.replica().app().region().is_some()
                        || r.core.replica().is_installing() =>
                {
                    continue
                }
                // Uninitialized: the split wrote its initial state; start it from there.
                Some(_) => {
                    self.regions.remove(&id);
                    self.hashes.remove(id);
                }
                None => {}
            }
            self.start_region(id)?;
            info!(self.logger, "region created by a split"; "region" => id, "parent_led" => led);
            if led {
                // The parent's leader has the freshest view of the new region's peers: it
                // campaigns at once instead of waiting out an election timeout.
                if let Some(r) = self.regions.get_mut(&id) {
                    r.core.campaign()?;
                }
            }
            out.created.push(id);
        }
        Ok(out)
    }

    /// Refuses the read barriers of this turn whose region no longer holds their keys at their
    /// epoch (see [`StoreCore::read`]).
    fn recheck_reads(&mut self, out: &mut StoreOutput) {
        if self.reads.is_empty() {
            return;
        }
        let mut kept = Vec::with_capacity(out.replies.len());
        for reply in std::mem::take(&mut out.replies) {
            let Some((region, epoch, keys)) = self.reads.remove(&reply.1) else {
                kept.push(reply);
                continue;
            };
            if matches!(reply.2, Ok(Answer::ReadReady { .. })) {
                let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
                if let Err(e) = self.check(region, &epoch, &keys) {
                    out.refused_reads.push((reply.1, e));
                    continue;
                }
            }
            kept.push(reply);
        }
        out.replies = kept;
    }
}
