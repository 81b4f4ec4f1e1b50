//! The calls that report on a node: `Status` (its role and progress, each region's on a
//! store) and the consistency check's `Check` (a hash point into a region's log) and `Hash`
//! (this replica's hash at that point).

use rdb_proto::command::{self, command::Op};
use rdb_proto::kv::{
    CheckRequest, CheckResponse, HashRequest, HashResponse, RegionContext, StatusRequest,
    StatusResponse,
};
use rdb_storage::{CommandResult, HashState};
use tonic::{Request, Response, Status};

use super::{err, to_pb, KvService};
use crate::router::{Msg, RequestError};

/// The region a `Check` or `Hash` is for: the one its context names, or region 1 (a
/// config-file cluster's only region).
fn region_of(context: Option<&RegionContext>) -> u64 {
    match context.map(|c| c.region_id) {
        Some(id) if id != 0 => id,
        _ => crate::store::serve::FIRST_REGION_ID,
    }
}

impl KvService {
    /// `Status`: this node's view, and on a store each region's.
    pub(super) async fn status_inner(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let s = tokio::time::timeout(self.timeout(), self.mailbox.call(|tx| Msg::Status { tx }))
            .await
            .map_err(|_| Status::unavailable("node did not answer in time"))?
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(StatusResponse {
            cluster_id: self.cluster_id,
            node_id: s.node_id,
            role: s.role,
            term: s.term,
            leader_id: s.leader_id,
            leader_addr: s.leader_addr,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            first_index: s.first_index,
            last_index: s.last_index,
            client_addr: self.client_addr.clone(),
            followers: s
                .followers
                .iter()
                .map(|&(id, m)| rdb_proto::kv::FollowerProgress {
                    id,
                    match_index: m,
                    lag: s.last_index.saturating_sub(m),
                })
                .collect(),
            store: s.regions.is_some(),
            regions: s
                .regions
                .unwrap_or_default()
                .into_iter()
                .map(|r| rdb_proto::kv::RegionStatus {
                    region_id: r.region_id,
                    peer_id: r.peer_id,
                    role: r.role,
                    term: r.term,
                    leader_peer_id: r.leader.0,
                    leader_store_id: r.leader.1,
                    commit_index: r.commit_index,
                    applied_index: r.applied_index,
                    lag: r.lag,
                    learner: r.learner,
                })
                .collect(),
        }))
    }

    /// `Check`: a hash point written into the region's log; answers its index.
    pub(super) async fn check_inner(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let deadline = self.deadline(&request);
        // Into that region's log, like any write to it (leader and epoch checked). Without a
        // region, the store's own default: a config-file node's region 1.
        let context = request.into_inner().context;
        match self
            .write(
                deadline,
                None,
                Op::HashPoint(command::HashPoint {}),
                context,
            )
            .await
        {
            Ok(CommandResult::HashPoint { index }) => {
                Ok(Response::new(CheckResponse { error: None, index }))
            }
            Ok(_) => Err(super::unexpected_result("hash point")),
            Err(e) => err(e, |r: &mut CheckResponse, e| r.error = Some(e)),
        }
    }

    /// `Hash`: this replica's hash at a hash point, once it is made.
    pub(super) async fn hash_inner(
        &self,
        request: Request<HashRequest>,
    ) -> Result<Response<HashResponse>, Status> {
        let HashRequest { index, context } = request.into_inner();
        if index == 0 {
            let e = RequestError::InvalidArgument("index must be a hash point's index".into());
            return err(e, |r: &mut HashResponse, e| r.error = Some(e));
        }
        // The results of the region asked about.
        let id = region_of(context.as_ref());
        let (hashes, engine) = match self.hashes.get(id) {
            Some(r) => (r.results, r.engine),
            None => {
                let e = RequestError::RegionNotFound(format!(
                    "this store hosts no peer of region {id}"
                ));
                return err(e, |r: &mut HashResponse, e| r.error = Some(e));
            }
        };
        let applied = engine.apply_state().map_err(Self::storage_error)?.index;
        let state = hashes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&index)
            .cloned();
        let mut resp = HashResponse {
            applied_index: applied,
            ..Default::default()
        };
        match state {
            Some(HashState::Done { hash, records }) => {
                resp.ready = true;
                resp.hash = hash;
                resp.records = records;
            }
            Some(HashState::Computing) => {}
            None if applied < index => {}
            Some(HashState::Failed(e)) => {
                return Err(Status::internal(format!("hashing failed: {e}")));
            }
            None => {
                resp.error = Some(to_pb(RequestError::InvalidArgument(format!(
                    "no hash was made here at index {index}: this node restarted or installed \
                     a snapshot past it, or it is older than the last hash points kept"
                ))));
            }
        }
        Ok(Response::new(resp))
    }
}
