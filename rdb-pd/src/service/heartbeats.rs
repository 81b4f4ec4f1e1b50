//! Heartbeats: a store's (it is alive) and a region leader's (its region checked and recorded
//! in PD's map, answered with the scheduler's next step, see `placement.rs`).

use super::*;

impl PdService {
    /// A store's heartbeat: it is alive (and its disk as it reports it), if it is registered
    /// and not a tombstone.
    pub(super) async fn on_store_heartbeat(
        &self,
        req: StoreHeartbeatRequest,
    ) -> StoreHeartbeatResponse {
        let id = req.store_id;
        let disk = (req.capacity_bytes, req.available_bytes, req.used_bytes);
        let error = match self.barrier().await {
            Ok(()) => match self.read(|s| s.stores.get(&id).map(|st| st.state)) {
                None => Some(coded(
                    ErrorCode::NotFound,
                    format!("store {id} is not registered"),
                )),
                Some(st) if st == StoreState::Tombstone as i32 => Some(coded(
                    ErrorCode::InvalidArgument,
                    format!("store {id} is a tombstone"),
                )),
                Some(_) => {
                    let mut b = lock(&self.beats);
                    b.stores.insert(id, Instant::now());
                    b.disks.insert(id, disk);
                    None
                }
            },
            Err(e) => self.err(e),
        };
        StoreHeartbeatResponse { error }
    }

    /// A region leader's report: checked and recorded in PD's map (through the log when it
    /// changed anything), and answered with the scheduler's next step for the region.
    pub(super) async fn on_region_heartbeat(
        &self,
        r: RegionHeartbeatRequest,
    ) -> RegionHeartbeatResponse {
        let refuse = |e| RegionHeartbeatResponse::refusal(pb_error(e, &self.config));
        let Some(region) = r.region else {
            return refuse(RequestError::InvalidArgument("a region is required".into()));
        };
        if region.id == 0 {
            return refuse(RequestError::InvalidArgument(
                "region id 0 is reserved".into(),
            ));
        }
        if let Err(e) = self.barrier().await {
            return refuse(e);
        }
        let (checked, unchanged) = self.read(|s| {
            let unchanged = s.regions.get(&region.id) == Some(&region) && !s.reserves(&region);
            // A report equal to PD's record passed these checks when it was recorded, and
            // changes nothing: the range checks (a scan of every region) run only for new or
            // changed reports, so steady heartbeats cost O(log n) at any scale.
            let checked = s
                .check_leader(&region, r.leader.as_ref())
                .map_err(|m| (ErrorCode::InvalidArgument, m))
                .and_then(|()| {
                    if unchanged {
                        Ok(())
                    } else {
                        s.check_region(&region)
                    }
                });
            (checked, unchanged)
        });
        let error = match checked {
            Err((code, message)) => Some(coded(code, message)),
            Ok(()) if unchanged => None,
            // New, changed or naming unreserved ids: apply checks again and decides, so every
            // PD node agrees on the verdict.
            Ok(()) => match self.change(Op::PutRegion(region.clone())).await {
                Ok((None, _)) => {
                    // A merged region's report drops the region it took over: its operator
                    // is over.
                    self.retire_regions();
                    None
                }
                Ok((e, _)) => e,
                Err(e) => self.err(e),
            },
        };
        if error.is_some() {
            return RegionHeartbeatResponse {
                error,
                operator: None,
            };
        }
        lock(&self.beats).regions.insert(
            region.id,
            (r.leader, r.approximate_size, r.approximate_keys),
        );
        let operator = match &r.leader {
            Some(leader) => self.operator_for(&region, leader).await,
            None => None,
        };
        self.tombstone_drained().await;
        RegionHeartbeatResponse {
            error: None,
            operator,
        }
    }
}
