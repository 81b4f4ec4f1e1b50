//! A peer's message arriving at a store: the region it is for, an uninitialized peer created
//! for a leader PD vouches for, and which snapshots may be stepped (none overlapping a region
//! hosted or a snapshot pending here).

use super::*;

impl StoreCore {
    /// What PD says of a region a leader named, or of a region hosted here that has had no
    /// leader for a while (see [`StoreOutput::confirm`]). Not hosted: if PD has a peer of it on
    /// this store, that leader's next message may create the peer here. Hosted: if PD's region
    /// is of a later membership (`conf_ver`) that has no peer of this store, the peer here was
    /// removed without hearing so (its leader stopped sending once the removal applied, before
    /// it learnt the removal committed): it is dropped in the next turn, as if it had applied
    /// the removal. A removed peer id never comes back, so PD's later view is enough.
    ///
    /// An uninitialized peer here was made only once PD listed it (see
    /// [`StoreCore::create_for`]), and PD's map only moves forward: if PD's region no longer
    /// lists it, it was removed before its first snapshot, and its leader never sends to it
    /// again. It is dropped too (with a tombstone, so it never votes again).
    ///
    /// A region installing a snapshot (or with one stepped, not yet installed) is left alone:
    /// dropping it would take the file from under the install, which then fails the store. It
    /// is asked about again once the install is over.
    pub fn confirm_region(&mut self, region: &Region) {
        if self.regions.contains_key(&region.id) && self.snapshot_in_hand(region.id) {
            return;
        }
        if let Some(r) = self.regions.get(&region.id) {
            let listed = region.peers.iter().any(|p| p.id == r.peer_id);
            let removed = match r.core.replica().app().region() {
                Some(meta) => {
                    region::epoch(region).conf_ver > region::epoch(meta).conf_ver && !listed
                }
                None => !listed,
            };
            if removed {
                info!(self.logger, "PD says this store's peer was removed"; "region" => region.id,
                    "peer" => r.peer_id, "conf_ver" => region::epoch(region).conf_ver);
                if !self.stale.contains(&region.id) {
                    self.stale.push(region.id);
                }
            }
            return;
        }
        let Some(peer) = region.peers.iter().find(|p| p.store_id == self.store_id) else {
            return;
        };
        self.confirmed.insert(region.id, (peer.id, self.ticks));
    }

    /// What PD says when it does not know region `id`, which is hosted here and initialized:
    /// `covering` is PD's region over its start key. If that region covers this one's whole
    /// range at a later range version and has no peer on this store, this peer was merged
    /// away without taking part (it had been removed from its region without hearing so,
    /// and the region then merged into one this store does not host): it is dropped in the
    /// next turn, with a tombstone. A region too new for PD (a split not reported yet) is
    /// covered only by its parent's older version; a merge this store takes part in leaves
    /// the merged region a peer here, whose commit folds this one in.
    pub fn confirm_covered(&mut self, id: u64, covering: &Region) {
        // As in `confirm_region`: never from under a snapshot install.
        if self.snapshot_in_hand(id) {
            return;
        }
        let Some(r) = self.regions.get(&id) else {
            return;
        };
        let Some(meta) = r.core.replica().app().region() else {
            return;
        };
        let covers = region::covers(covering, meta);
        let later = region::epoch(covering).version > region::epoch(meta).version;
        let here = covering.peers.iter().any(|p| p.store_id == self.store_id);
        if covering.id != id && covers && later && !here {
            info!(self.logger, "PD's region covers this one at a later version, without a peer                 here: this peer was merged away"; "region" => id, "peer" => r.peer_id,
                "covering" => covering.id);
            if !self.stale.contains(&id) {
                self.stale.push(id);
            }
        }
    }

    /// Whether region `id` is installing a snapshot here, or has one stepped and waiting.
    fn snapshot_in_hand(&self, id: u64) -> bool {
        self.is_installing(id) || self.pending_snapshots.contains_key(&id)
    }

    /// Asks (through [`StoreOutput::confirm`]) about region `id`, unless it was asked about
    /// lately or too many are waiting.
    pub(super) fn ask(&mut self, id: u64, out: &mut Vec<u64>) {
        let ticks = self.ticks;
        self.asked
            .retain(|_, &mut at| ticks.saturating_sub(at) < ASK_AGAIN_TICKS);
        if self.asked.contains_key(&id) || self.asked.len() >= MAX_ASKED {
            return;
        }
        self.asked.insert(id, ticks);
        out.push(id);
    }

    /// Uninitialized regions hosted here.
    pub(super) fn uninit_count(&self) -> usize {
        self.regions
            .values()
            .filter(|r| r.core.replica().app().region().is_none())
            .count()
    }

    /// Hands a peer's message to its region.
    ///
    /// A region appears on a store by bootstrap, by a split applied from its parent's log, or,
    /// when a leader's heartbeat, append or snapshot names a region this store does not host,
    /// as an uninitialized peer: a store that received the parent by snapshot never applies
    /// the split, so this is how it gets the new region (TiKV's way); the leader then sends it
    /// a snapshot. Such a peer is created only once PD confirmed the region has that peer here
    /// (the first messages are dropped while the store asks, see [`StoreOutput::confirm`]),
    /// and only up to [`MAX_UNINIT`] of them: a message alone creates nothing.
    ///
    /// A snapshot is stepped only if its range overlaps no other region hosted here and no
    /// snapshot stepped but not installed yet (a parent that has not applied its split yet
    /// still covers it: the leader sends it again later), and fewer than [`MAX_INSTALLS`] are
    /// pending. A dropped snapshot's file is removed. Messages for another peer id than this
    /// store's are dropped, and so is every message for a region installing a snapshot (a
    /// second snapshot included): its replica is silent until the install is over (see
    /// `Replica::is_installing`), and its leader sends again.
    ///
    /// A storage error (creating the uninitialized region) must end the store.
    pub fn step(&mut self, m: RegionMessage) -> Result<(), CoreError> {
        use raft::prelude::MessageType;
        let snapshot = m.msg.get_msg_type() == MessageType::MsgSnapshot;
        if !self.regions.contains_key(&m.region_id) && !self.create_for(&m)? {
            self.dropped += 1;
            if snapshot {
                self.discard_snapshot_file(m.region_id, &m.msg);
            }
            return Ok(());
        }
        if self.is_installing(m.region_id) {
            self.dropped += 1;
            if snapshot {
                self.discard_snapshot_file(m.region_id, &m.msg);
            }
            return Ok(());
        }
        if snapshot
            && self.pending_snapshots.len() >= MAX_INSTALLS
            && !self.pending_snapshots.contains_key(&m.region_id)
        {
            debug!(self.logger, "too many snapshots pending; one waits"; "region" => m.region_id,
                "limit" => MAX_INSTALLS);
            self.dropped += 1;
            self.discard_snapshot_file(m.region_id, &m.msg);
            return Ok(());
        }
        if snapshot {
            self.drop_merged_under(m.region_id, &m.msg);
        }
        let Some(meta) = (if snapshot {
            self.snapshot_fits(m.region_id, &m.msg)
        } else {
            Some(None)
        }) else {
            self.dropped += 1;
            self.discard_snapshot_file(m.region_id, &m.msg);
            return Ok(());
        };
        match self.regions.get_mut(&m.region_id) {
            Some(r) if r.peer_id == m.msg.to => {
                r.heard.insert(m.msg.from, m.from_store);
                let from = m.msg.from;
                if !r.core.step(m.msg) {
                    self.refused += 1;
                    return Ok(());
                }
                if from == r.core.replica().leader_id() {
                    r.leaderless = 0;
                }
                if let Some(pending) = meta {
                    self.keep_pending(m.region_id, pending);
                }
            }
            _ => {
                self.dropped += 1;
                debug!(self.logger, "message for another peer of a region";
                    "region" => m.region_id, "to" => m.msg.to, "from_store" => m.from_store);
                if snapshot {
                    self.discard_snapshot_file(m.region_id, &m.msg);
                }
            }
        }
        Ok(())
    }

    /// Whether `m`, for a region not hosted here, creates it uninitialized (see
    /// [`StoreCore::step`]); otherwise it is dropped, and the region may be asked about.
    pub(super) fn create_for(&mut self, m: &RegionMessage) -> Result<bool, CoreError> {
        use raft::prelude::MessageType;
        let from_leader = matches!(
            m.msg.get_msg_type(),
            MessageType::MsgHeartbeat | MessageType::MsgAppend | MessageType::MsgSnapshot
        );
        if !from_leader || m.msg.to == 0 {
            debug!(self.logger, "message for a region not hosted here";
                "region" => m.region_id, "to" => m.msg.to, "from_store" => m.from_store);
            return Ok(false);
        }
        // A peer removed from here (or an older one) is never made again: its group moved on
        // without it, and a stale leader's message must not bring it back.
        let removed = self
            .engine
            .tombstone(m.region_id)
            .map_err(CoreError::storage)?;
        if removed.is_some_and(|peer| m.msg.to <= peer) {
            debug!(self.logger, "message for a removed peer"; "region" => m.region_id,
                "to" => m.msg.to, "from_store" => m.from_store);
            return Ok(false);
        }
        match self.confirmed.get(&m.region_id) {
            Some(&(peer, _)) if peer == m.msg.to => {}
            _ => {
                let mut asks = std::mem::take(&mut self.pending_asks);
                self.ask(m.region_id, &mut asks);
                self.pending_asks = asks;
                return Ok(false);
            }
        }
        if self.uninit_count() >= MAX_UNINIT {
            warn!(self.logger, "too many uninitialized regions; a new one waits";
                "region" => m.region_id, "limit" => MAX_UNINIT);
            return Ok(false);
        }
        self.confirmed.remove(&m.region_id);
        self.asked.remove(&m.region_id);
        self.start_uninit(m.region_id, m.msg.to)?;
        Ok(true)
    }

    /// Records a snapshot stepped for region `id` as pending. Of two stepped before one
    /// installs, raft-rs keeps the newer: so does this, and the other's file goes.
    pub(super) fn keep_pending(&mut self, id: u64, pending: (Region, SnapshotDescriptor)) {
        let dir = crate::transport::region_snap_dir(&self.engine.snap_dir(), id);
        let older = match self.pending_snapshots.get(&id) {
            Some((_, d)) if *d == pending.1 => return,
            Some((_, d)) if d.index > pending.1.index => pending.1,
            _ => match self.pending_snapshots.insert(id, pending) {
                Some((_, d)) => d,
                None => return,
            },
        };
        let _ = std::fs::remove_file(older.path_in(&dir));
    }

    /// Removes the received file of a snapshot message that will not be stepped (unless it is
    /// the file of the snapshot its region is installing: the same snapshot, sent again).
    pub(super) fn discard_snapshot_file(&self, region_id: u64, msg: &Message) {
        if let Ok(desc) = SnapshotDescriptor::decode(&msg.get_snapshot().data) {
            let installing = self
                .regions
                .get(&region_id)
                .and_then(|r| r.core.replica().installing_snapshot());
            if installing == Some((desc.index, desc.term)) {
                return;
            }
            let dir = crate::transport::region_snap_dir(&self.engine.snap_dir(), region_id);
            let _ = std::fs::remove_file(desc.path_in(&dir));
            if !self.regions.contains_key(&region_id) {
                // Empty unless another upload for the region is under way.
                let _ = std::fs::remove_dir(&dir);
            }
        }
    }

    /// The range a snapshot for region `id` will cover and its descriptor, if it may be
    /// stepped: it overlaps no other region hosted here and no snapshot waiting to be
    /// installed. `None`: drop it.
    pub(super) fn snapshot_fits(
        &self,
        id: u64,
        msg: &raft::prelude::Message,
    ) -> Option<Option<(Region, SnapshotDescriptor)>> {
        let view = self.region_engine(id)?;
        let desc = SnapshotDescriptor::decode(&msg.get_snapshot().data).ok()?;
        let meta = match rdb_storage::snapshot::region_meta_of(&view, msg.get_snapshot()) {
            Ok(m) if m.id == id => m,
            Ok(m) => {
                warn!(self.logger, "snapshot of another region; dropped"; "region" => id,
                    "snapshot_region" => m.id);
                return None;
            }
            Err(e) => {
                debug!(self.logger, "snapshot without a usable region meta"; "region" => id,
                    "error" => %e);
                return None;
            }
        };
        let hosted = self
            .regions
            .iter()
            .filter(|(&other, _)| other != id)
            .filter_map(|(_, r)| r.core.replica().app().region());
        let pending = self
            .pending_snapshots
            .iter()
            .filter(|(&other, _)| other != id)
            .map(|(_, (r, _))| r);
        match hosted.chain(pending).find(|o| overlaps(o, &meta)) {
            Some(o) => {
                debug!(self.logger, "snapshot overlaps a region hosted or being installed here; dropped";
                    "region" => id, "other" => o.id);
                None
            }
            None => Some(Some((meta, desc))),
        }
    }
}
