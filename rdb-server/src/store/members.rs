//! A region's membership on a store: changes proposed through the region's log, leadership
//! handed over, what each hosted region looks like (for `Status`), and a removed peer dropped
//! with a tombstone, its data deleted later.

use super::*;

impl StoreCore {
    /// Every hosted region as its peer here sees it, for `Status` and health.
    pub fn region_states(&self) -> Vec<crate::router::RegionState> {
        self.regions
            .iter()
            .map(|(&id, r)| {
                let rep = r.core.replica();
                let leader = rep.leader_id();
                let lag = if rep.is_leader() {
                    let last = rep.log_bounds().1;
                    rep.progress()
                        .iter()
                        .map(|&(_, m)| last.saturating_sub(m))
                        .max()
                        .unwrap_or(0)
                } else {
                    rep.commit_index().saturating_sub(rep.applied_index())
                };
                crate::router::RegionState {
                    region_id: id,
                    peer_id: r.peer_id,
                    role: crate::node::role_code(rep.role()),
                    term: rep.term(),
                    leader: (leader, self.store_of(id, leader).unwrap_or(0)),
                    commit_index: rep.commit_index(),
                    applied_index: rep.applied_index(),
                    lag,
                    learner: rep.is_learner(r.peer_id),
                }
            })
            .collect()
    }

    /// Proposes a membership change of region `region_id` as request `id` (its leader only;
    /// the core refuses on a follower and checks the steps as for any group, the catch-up
    /// rule of a promotion included). `added` names the store of each peer a step adds: a
    /// region has at most one peer per store. Answered with the new membership once applied.
    pub fn change_members(
        &mut self,
        region_id: u64,
        id: RequestId,
        steps: &[MemberStep],
        added: &[MemberRecord],
    ) -> Result<(), RegionError> {
        // A merging source keeps its peers: the target takes over exactly those stores.
        if let Some(target) = self.merging_into(region_id) {
            return Err(RegionError::Merging {
                region: region_id,
                target,
            });
        }
        let r = self
            .regions
            .get_mut(&region_id)
            .ok_or(RegionError::NotFound(region_id))?;
        let meta = r
            .core
            .replica()
            .app()
            .region()
            .ok_or(RegionError::NotFound(region_id))?;
        let mut stores: Vec<u64> = meta.peers.iter().map(|p| p.store_id).collect();
        let mut context = Vec::new();
        for step in steps {
            let (MemberStep::AddVoter(peer) | MemberStep::AddLearner(peer)) = *step else {
                continue;
            };
            let record = added.iter().find(|a| a.id == peer);
            let store = record.map_or(0, |a| a.store_id);
            if store == 0 {
                return Err(RegionError::Invalid(format!(
                    "peer {peer} is added without the store that hosts it"
                )));
            }
            if stores.contains(&store) {
                return Err(RegionError::Invalid(format!(
                    "store {store} already hosts a peer of region {region_id}"
                )));
            }
            stores.push(store);
            // With its addresses, when it has them (a config-file cluster's node).
            context.push(MemberRecord {
                id: peer,
                store_id: store,
                ..record.cloned().unwrap_or_default()
            });
        }
        let context = prost::Message::encode_to_vec(&MemberContext { added: context });
        info!(self.logger, "proposing a membership change"; "region" => region_id,
            "steps" => ?steps, "term" => r.core.replica().term());
        r.core.change_membership(id, steps, context);
        Ok(())
    }

    /// Starts handing region `region_id`'s leadership to its peer `to` (its leader only).
    pub fn transfer_leader(&mut self, region_id: u64, to: u64) -> Result<(), RequestRefused> {
        let r = self
            .regions
            .get_mut(&region_id)
            .ok_or(RequestRefused::Region(RegionError::NotFound(region_id)))?;
        r.core.transfer_leader(to).map_err(RequestRefused::Core)?;
        info!(self.logger, "transferring leadership"; "region" => region_id, "to" => to,
            "term" => r.core.replica().term());
        Ok(())
    }

    /// Drops region `id`'s peer, which a membership change just removed (or, uninitialized,
    /// was removed before its first snapshot): its Raft state goes at once (with a tombstone,
    /// see [`Engine::destroy_region`]), its user data [`GARBAGE_TICKS`] later.
    pub(super) fn destroy(&mut self, id: u64) -> Result<(), CoreError> {
        let Some(r) = self.regions.remove(&id) else {
            return Ok(());
        };
        self.hashes.remove(id);
        if let Some((_, desc)) = self.pending_snapshots.remove(&id) {
            let dir = crate::transport::region_snap_dir(&self.engine.snap_dir(), id);
            let _ = std::fs::remove_file(desc.path_in(&dir));
        }
        // The region's requests in flight end with it: the client retries at its leader.
        drop(r.core);
        let meta = self
            .engine
            .destroy_region(id, r.peer_id)
            .map_err(CoreError::storage)?;
        match meta {
            Some(meta) => {
                info!(self.logger, "region peer removed from this store"; "region" => id,
                    "peer" => r.peer_id, "conf_ver" => region::epoch(&meta).conf_ver);
                self.garbage.push((self.ticks + GARBAGE_TICKS, meta));
            }
            None => info!(self.logger, "uninitialized region peer removed from this store";
                "region" => id, "peer" => r.peer_id),
        }
        Ok(())
    }

    /// Deletes a removed peer's user data where no region hosted or being installed here
    /// now holds it.
    pub(super) fn collect(&mut self, g: &Region) -> Result<(), CoreError> {
        let keep: Vec<(Vec<u8>, Vec<u8>)> = self
            .regions
            .values()
            .filter_map(|r| r.core.replica().app().region())
            .chain(self.pending_snapshots.values().map(|(m, _)| m))
            .map(|m| (m.start_key.clone(), m.end_key.clone()))
            .collect();
        self.engine
            .collect_garbage(g, &keep)
            .map_err(CoreError::storage)?;
        info!(self.logger, "removed peer's data deleted"; "region" => g.id);
        Ok(())
    }
}
