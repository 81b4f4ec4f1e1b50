//! The client KV service. Errors travel as data in each response (`Error` with a code and,
//! for `NotLeader`, the leader's id and address), never as free text in gRPC metadata.

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use rdb_proto::command::{self, command::Op, Command};
use rdb_proto::kv::kv_server::Kv;
use rdb_proto::kv::{
    CasRequest, CasResponse, CheckRequest, CheckResponse, Consistency, DeleteRequest,
    DeleteResponse, Error as PbError, ErrorCode, GetRequest, GetResponse, HashRequest,
    HashResponse, KeyValue, LeaderHint as PbLeaderHint, PutRequest, PutResponse, RegionContext,
    RequestId, ScanRequest, ScanResponse, StatusRequest, StatusResponse,
};
use rdb_storage::region::Region;
use rdb_storage::{CommandResult, Engine, HashState};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::config::Settings;
use crate::members::SharedDirectory;
use crate::router::{Mailbox, Msg, RegionRoute, RequestError};
use crate::store::hashes::StoreHashes;

/// Serves the client API of one store (a config-file node is a store hosting region 1).
/// Every request goes to a region: the one its context names, or the one holding its first
/// key (`Msg::RegionPropose`, `Msg::RegionRead`).
#[derive(Clone)]
pub struct KvService {
    pub(crate) mailbox: Mailbox,
    pub(crate) engine: Engine,
    /// The hosted regions' hash results, which answer `Hash`.
    hashes: StoreHashes,
    pub(crate) settings: Arc<Settings>,
    pub(crate) cluster_id: u64,
    client_addr: String,
    /// A config-file cluster's members' addresses (empty for a PD-mode store, whose peers are
    /// named by their stores).
    pub(crate) members: SharedDirectory,
}

impl KvService {
    /// A service that proposes through `mailbox`, reads from `engine` and answers `Hash`
    /// from `hashes`.
    pub fn new(
        mailbox: Mailbox,
        engine: Engine,
        hashes: StoreHashes,
        settings: Arc<Settings>,
        cluster_id: u64,
        client_addr: String,
        members: SharedDirectory,
    ) -> KvService {
        KvService {
            mailbox,
            engine,
            hashes,
            settings,
            cluster_id,
            client_addr,
            members,
        }
    }

    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_millis(self.settings.request_timeout_ms)
    }

    /// When a request must be answered: the server's request timeout, or sooner when the
    /// client's gRPC deadline (`grpc-timeout`) is nearer. A tenth of the client's time is kept
    /// back so the typed answer (Unavailable or Indeterminate) reaches it before it gives up.
    pub(crate) fn deadline<T>(&self, request: &Request<T>) -> Instant {
        let mut timeout = self.timeout();
        if let Some(client) = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
        {
            timeout = timeout.min(client.mul_f64(0.9));
        }
        Instant::now() + timeout
    }

    pub(crate) fn check_key(&self, key: &[u8]) -> Result<(), RequestError> {
        let max = self.settings.max_key_bytes;
        if key.is_empty() {
            return Err(RequestError::InvalidArgument(
                "key must not be empty".into(),
            ));
        }
        if key.len() > max {
            return Err(RequestError::InvalidArgument(format!(
                "key is {} bytes, over the limit of {max} bytes",
                key.len()
            )));
        }
        Ok(())
    }

    pub(crate) fn check_value(&self, value: &[u8]) -> Result<(), RequestError> {
        let max = self.settings.max_value_bytes;
        if value.len() > max {
            return Err(RequestError::InvalidArgument(format!(
                "value is {} bytes, over the limit of {max} bytes",
                value.len()
            )));
        }
        Ok(())
    }

    /// Proposes a write and waits for it to apply. Waiting for room in the mailbox is bounded
    /// and fails as `Unavailable` (nothing proposed); waiting for the outcome is bounded and
    /// fails as `Indeterminate` (the entry may still commit).
    pub(crate) async fn write(
        &self,
        deadline: Instant,
        id: Option<RequestId>,
        op: Op,
        context: Option<RegionContext>,
    ) -> Result<CommandResult, RequestError> {
        let id = id.unwrap_or_default();
        let keys = op_keys(&op);
        let cmd = Command {
            client_id: id.client_id,
            seq: id.seq,
            op: Some(op),
        };
        let data = cmd.encode_to_vec();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let msg = Msg::RegionPropose {
            route: route(context, keys),
            data,
            tx,
        };
        tokio::time::timeout_at(deadline, self.mailbox.send(msg))
            .await
            .map_err(|_| RequestError::Unavailable("node is overloaded".into()))??;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(RequestError::Indeterminate("node stopped".into())),
            Err(_) => Err(RequestError::Indeterminate(
                "no outcome before the deadline".into(),
            )),
        }
    }

    /// Waits until reading local state is linearizable (ReadIndex), unless serializable. The
    /// keys must belong to one region here, which is returned as applied.
    pub(crate) async fn read_barrier(
        &self,
        deadline: Instant,
        consistency: i32,
        context: Option<RegionContext>,
        keys: &[Vec<u8>],
    ) -> Result<Region, RequestError> {
        let serializable =
            consistency == Consistency::Serializable as i32 || cfg!(feature = "inject-stale-reads");
        if !serializable && consistency != Consistency::Linearizable as i32 {
            return Err(RequestError::InvalidArgument(format!(
                "unknown consistency {consistency}"
            )));
        }
        let timed_out = || {
            RequestError::Unavailable("no quorum confirmed leadership before the deadline".into())
        };
        let route = route(context, keys.to_vec());
        let call = self.mailbox.call(|tx| Msg::RegionRead {
            route,
            linearizable: !serializable,
            tx,
        });
        match tokio::time::timeout_at(deadline, call).await {
            Ok(r) => r?,
            Err(_) => Err(timed_out()),
        }
    }

    pub(crate) fn storage_error(e: rdb_storage::Error) -> Status {
        match e {
            // The data is being replaced by a snapshot for a moment: try again (or elsewhere).
            rdb_storage::Error::SnapshotInstalling => Status::unavailable(e.to_string()),
            e => Status::internal(format!("storage: {e}")),
        }
    }

    /// Why a read of local user data failed. One that a snapshot install of its keys overlapped
    /// (only the keys being loaded: other regions' reads go on) is refused as data,
    /// `Unavailable`, so the client tries again here or at another replica; any other failure
    /// is the server's (`INTERNAL`).
    pub(crate) fn read_failed(e: rdb_storage::Error) -> Result<RequestError, Status> {
        match e {
            rdb_storage::Error::SnapshotInstalling => Ok(RequestError::Unavailable(e.to_string())),
            e => Err(Self::storage_error(e)),
        }
    }
}

/// The part of the scan range `[start, end)` (empty end: unbounded) inside `region`, and the
/// region's end when the range goes on past it (where the next page starts).
fn clip_to_region(
    start: Vec<u8>,
    end: Vec<u8>,
    region: &Region,
) -> (Vec<u8>, Vec<u8>, Option<Vec<u8>>) {
    let start = start.max(region.start_key.clone());
    let range_goes_on = !region.end_key.is_empty() && (end.is_empty() || end > region.end_key);
    if range_goes_on {
        (start, region.end_key.clone(), Some(region.end_key.clone()))
    } else {
        (start, end, None)
    }
}

/// The region a `Check` or `Hash` is for: the one its context names, or region 1 (a
/// config-file cluster's only region).
fn region_of(context: Option<&RegionContext>) -> u64 {
    match context.map(|c| c.region_id) {
        Some(id) if id != 0 => id,
        _ => crate::store::serve::FIRST_REGION_ID,
    }
}

/// The keys a KV command touches, in order (none for a hash point).
fn op_keys(op: &Op) -> Vec<Vec<u8>> {
    match op {
        Op::Put(p) => vec![p.key.clone()],
        Op::Delete(d) => vec![d.key.clone()],
        Op::Cas(c) => vec![c.key.clone()],
        Op::Batch(b) => b
            .puts
            .iter()
            .map(|p| p.key.clone())
            .chain(b.deletes.iter().map(|d| d.key.clone()))
            .collect(),
        Op::HashPoint(_)
        | Op::Split(_)
        | Op::PrepareMerge(_)
        | Op::CommitMerge(_)
        | Op::RollbackMerge(_) => Vec::new(),
    }
}

/// Where a request goes, from its region context and keys.
fn route(context: Option<RegionContext>, keys: Vec<Vec<u8>>) -> RegionRoute {
    let context = context.unwrap_or_default();
    RegionRoute {
        region_id: context.region_id,
        epoch: context.epoch.filter(|_| context.region_id != 0),
        keys,
    }
}

/// The wire form of a request error.
pub fn to_pb(e: RequestError) -> PbError {
    let message = match &e {
        RequestError::InvalidArgument(m)
        | RequestError::Unavailable(m)
        | RequestError::Indeterminate(m)
        | RequestError::KeyNotInRegion(m, _)
        | RequestError::EpochNotMatch(m, _)
        | RequestError::RegionNotFound(m) => m.clone(),
        RequestError::NotLeader(Some(h)) => format!("node {} leads, at {}", h.id, h.addr),
        RequestError::NotLeader(None) => "not leader".into(),
    };
    let plain = |code: ErrorCode, message: String| PbError {
        code: code as i32,
        message,
        leader: None,
        regions: Vec::new(),
    };
    match e {
        RequestError::InvalidArgument(_) => plain(ErrorCode::InvalidArgument, message),
        RequestError::NotLeader(hint) => PbError {
            leader: hint.map(|h| PbLeaderHint {
                id: h.id,
                addr: h.addr,
                peer_id: h.peer_id,
            }),
            ..plain(ErrorCode::NotLeader, message)
        },
        RequestError::Unavailable(_) => plain(ErrorCode::Unavailable, message),
        RequestError::Indeterminate(_) => plain(ErrorCode::Indeterminate, message),
        RequestError::KeyNotInRegion(_, regions) => PbError {
            regions,
            ..plain(ErrorCode::KeyNotInRegion, message)
        },
        RequestError::EpochNotMatch(_, regions) => PbError {
            regions,
            ..plain(ErrorCode::EpochNotMatch, message)
        },
        RequestError::RegionNotFound(_) => plain(ErrorCode::RegionNotFound, message),
    }
}

pub(crate) fn err<T: Default>(
    e: RequestError,
    set: impl FnOnce(&mut T, PbError),
) -> Result<Response<T>, Status> {
    let mut resp = T::default();
    set(&mut resp, to_pb(e));
    Ok(Response::new(resp))
}

impl KvService {
    async fn put_inner(
        &self,
        request: Request<PutRequest>,
    ) -> Result<Response<PutResponse>, Status> {
        let deadline = self.deadline(&request);
        let r = request.into_inner();
        let res = async {
            self.check_key(&r.key)?;
            self.check_value(&r.value)?;
            self.write(
                deadline,
                r.request_id,
                Op::Put(command::Put {
                    key: r.key,
                    value: r.value,
                }),
                r.context,
            )
            .await
        }
        .await;
        match res {
            Ok(_) => Ok(Response::new(PutResponse { error: None })),
            Err(e) => err(e, |r: &mut PutResponse, e| r.error = Some(e)),
        }
    }

    async fn get_inner(
        &self,
        request: Request<GetRequest>,
    ) -> Result<Response<GetResponse>, Status> {
        let deadline = self.deadline(&request);
        let r = request.into_inner();
        let res = async {
            self.check_key(&r.key)?;
            self.read_barrier(
                deadline,
                r.consistency,
                r.context,
                std::slice::from_ref(&r.key),
            )
            .await
        }
        .await;
        if let Err(e) = res {
            return err(e, |r: &mut GetResponse, e| r.error = Some(e));
        }
        // A point read is short, but may wait on the disk: let the runtime move other tasks
        // off this worker meanwhile.
        let value = match tokio::task::block_in_place(|| self.engine.get(&r.key)) {
            Ok(v) => v,
            Err(e) => {
                return err(Self::read_failed(e)?, |r: &mut GetResponse, e| {
                    r.error = Some(e)
                })
            }
        };
        Ok(Response::new(GetResponse {
            error: None,
            found: value.is_some(),
            value: value.unwrap_or_default(),
        }))
    }

    async fn delete_inner(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let deadline = self.deadline(&request);
        let r = request.into_inner();
        let res = async {
            self.check_key(&r.key)?;
            self.write(
                deadline,
                r.request_id,
                Op::Delete(command::Delete { key: r.key }),
                r.context,
            )
            .await
        }
        .await;
        match res {
            Ok(CommandResult::Delete { existed }) => Ok(Response::new(DeleteResponse {
                error: None,
                existed,
            })),
            Ok(other) => Err(Status::internal(format!("delete produced {other:?}"))),
            Err(e) => err(e, |r: &mut DeleteResponse, e| r.error = Some(e)),
        }
    }

    async fn scan_inner(
        &self,
        request: Request<ScanRequest>,
    ) -> Result<Response<ScanResponse>, Status> {
        let deadline = self.deadline(&request);
        let r = request.into_inner();
        let max = self.settings.max_scan_limit;
        let res = async {
            if !r.prefix.is_empty() && (!r.start.is_empty() || !r.end.is_empty()) {
                return Err(RequestError::InvalidArgument(
                    "give either a prefix or a start/end range, not both".into(),
                ));
            }
            if r.limit > max {
                return Err(RequestError::InvalidArgument(format!(
                    "limit {} is over the maximum of {max}",
                    r.limit
                )));
            }
            for k in [&r.start, &r.end, &r.prefix] {
                if k.len() > self.settings.max_key_bytes {
                    return Err(RequestError::InvalidArgument(format!(
                        "scan bound is over the key limit of {} bytes",
                        self.settings.max_key_bytes
                    )));
                }
            }
            let first = if r.prefix.is_empty() {
                &r.start
            } else {
                &r.prefix
            };
            self.read_barrier(
                deadline,
                r.consistency,
                r.context,
                std::slice::from_ref(first),
            )
            .await
        }
        .await;
        let region = match res {
            Ok(region) => region,
            Err(e) => return err(e, |r: &mut ScanResponse, e| r.error = Some(e)),
        };
        let (start, end) = if r.prefix.is_empty() {
            (r.start, r.end)
        } else {
            (r.prefix.clone(), prefix_end(&r.prefix))
        };
        // One region's part of the range; the client goes on at the region's end.
        let (start, end, region_end) = clip_to_region(start, end, &region);
        let limit = if r.limit == 0 { max } else { r.limit } as usize;
        let engine = self.engine.clone();
        let max_bytes = self.settings.max_response_bytes;
        // A scan can read a lot: off the async workers.
        let scanned =
            tokio::task::spawn_blocking(move || engine.scan(&start, &end, limit, max_bytes))
                .await
                .map_err(|e| Status::internal(format!("scan task failed: {e}")))?;
        let page = match scanned {
            Ok(page) => page,
            Err(e) => {
                return err(Self::read_failed(e)?, |r: &mut ScanResponse, e| {
                    r.error = Some(e)
                })
            }
        };
        let next_start = match page.kvs.last() {
            Some((k, _)) if page.more => {
                let mut next = k.clone();
                next.push(0);
                next
            }
            // The region ended before the range did: the next page is the next region's.
            _ => region_end.clone().unwrap_or_default(),
        };
        Ok(Response::new(ScanResponse {
            error: None,
            kvs: page
                .kvs
                .into_iter()
                .map(|(key, value)| KeyValue { key, value })
                .collect(),
            more: page.more || region_end.is_some(),
            next_start,
        }))
    }

    async fn cas_inner(
        &self,
        request: Request<CasRequest>,
    ) -> Result<Response<CasResponse>, Status> {
        let deadline = self.deadline(&request);
        let r = request.into_inner();
        let res = async {
            self.check_key(&r.key)?;
            self.check_value(&r.new_value)?;
            if let Some(e) = &r.expected {
                self.check_value(e)?;
            }
            self.write(
                deadline,
                r.request_id,
                Op::Cas(command::Cas {
                    key: r.key,
                    expected: r.expected,
                    new_value: r.new_value,
                }),
                r.context,
            )
            .await
        }
        .await;
        match res {
            Ok(CommandResult::Cas { succeeded, current }) => Ok(Response::new(CasResponse {
                error: None,
                succeeded,
                current,
            })),
            Ok(other) => Err(Status::internal(format!("cas produced {other:?}"))),
            Err(e) => err(e, |r: &mut CasResponse, e| r.error = Some(e)),
        }
    }

    async fn status_inner(
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

    async fn check_inner(
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
            Ok(other) => Err(Status::internal(format!("hash point produced {other:?}"))),
            Err(e) => err(e, |r: &mut CheckResponse, e| r.error = Some(e)),
        }
    }

    async fn hash_inner(
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

#[tonic::async_trait]
impl Kv for KvService {
    async fn merge_region(
        &self,
        request: Request<rdb_proto::kv::MergeRegionRequest>,
    ) -> Result<Response<rdb_proto::kv::MergeRegionResponse>, Status> {
        let req = request.into_inner();
        let (source, target) = (req.source_id, req.target_id);
        let r = tokio::time::timeout(
            self.timeout(),
            self.mailbox
                .call(|tx| Msg::MergeRegion { source, target, tx }),
        )
        .await
        .unwrap_or_else(|_| {
            Err(RequestError::Unavailable(
                "the merge was not prepared in time".into(),
            ))
        })
        .and_then(|r| r);
        match r {
            Ok(_) => Ok(Response::new(rdb_proto::kv::MergeRegionResponse {
                error: None,
            })),
            Err(e) => err(e, |r: &mut rdb_proto::kv::MergeRegionResponse, e| {
                r.error = Some(e)
            }),
        }
    }

    async fn transfer_leader(
        &self,
        request: Request<rdb_proto::kv::TransferLeaderRequest>,
    ) -> Result<Response<rdb_proto::kv::TransferLeaderResponse>, Status> {
        let req = request.into_inner();
        let (region_id, to) = (req.region_id, req.to);
        let r = tokio::time::timeout(
            self.timeout(),
            self.mailbox
                .call(|tx| Msg::TransferLeader { region_id, to, tx }),
        )
        .await
        .unwrap_or_else(|_| {
            Err(RequestError::Unavailable(
                "node did not answer in time".into(),
            ))
        })
        .and_then(|r| r);
        match r {
            Ok(()) => Ok(Response::new(rdb_proto::kv::TransferLeaderResponse {
                error: None,
            })),
            Err(e) => err(e, |r: &mut rdb_proto::kv::TransferLeaderResponse, e| {
                r.error = Some(e)
            }),
        }
    }

    async fn batch_put(
        &self,
        request: Request<rdb_proto::kv::BatchPutRequest>,
    ) -> Result<Response<rdb_proto::kv::BatchPutResponse>, Status> {
        metered("batch_put", self.batch_put_inner(request), |r| {
            r.error.as_ref()
        })
        .await
    }

    async fn batch_get(
        &self,
        request: Request<rdb_proto::kv::BatchGetRequest>,
    ) -> Result<Response<rdb_proto::kv::BatchGetResponse>, Status> {
        metered("batch_get", self.batch_get_inner(request), |r| {
            r.error.as_ref()
        })
        .await
    }

    async fn batch_delete(
        &self,
        request: Request<rdb_proto::kv::BatchDeleteRequest>,
    ) -> Result<Response<rdb_proto::kv::BatchDeleteResponse>, Status> {
        metered("batch_delete", self.batch_delete_inner(request), |r| {
            r.error.as_ref()
        })
        .await
    }

    async fn member_list(
        &self,
        request: Request<rdb_proto::kv::MemberListRequest>,
    ) -> Result<Response<rdb_proto::kv::MemberListResponse>, Status> {
        metered("member_list", self.member_list_inner(request), |r| {
            r.error.as_ref()
        })
        .await
    }

    async fn member_change(
        &self,
        request: Request<rdb_proto::kv::MemberChangeRequest>,
    ) -> Result<Response<rdb_proto::kv::MemberChangeResponse>, Status> {
        metered("member_change", self.member_change_inner(request), |r| {
            r.error.as_ref()
        })
        .await
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        metered("put", self.put_inner(request), |r| r.error.as_ref()).await
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        metered("get", self.get_inner(request), |r| r.error.as_ref()).await
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        metered("delete", self.delete_inner(request), |r| r.error.as_ref()).await
    }

    async fn scan(&self, request: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
        metered("scan", self.scan_inner(request), |r| r.error.as_ref()).await
    }

    async fn cas(&self, request: Request<CasRequest>) -> Result<Response<CasResponse>, Status> {
        metered("cas", self.cas_inner(request), |r| r.error.as_ref()).await
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        self.status_inner(request).await
    }

    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        self.check_inner(request).await
    }

    async fn hash(&self, request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.hash_inner(request).await
    }
}

/// Runs one client call and records its outcome (`ok` or the error code) and latency.
async fn metered<T>(
    op: &'static str,
    call: impl std::future::Future<Output = Result<Response<T>, Status>>,
    error: impl Fn(&T) -> Option<&PbError>,
) -> Result<Response<T>, Status> {
    let started = std::time::Instant::now();
    let r = call.await;
    let outcome = match &r {
        Ok(resp) => match error(resp.get_ref()) {
            None => "ok",
            Some(e) => match ErrorCode::try_from(e.code) {
                Ok(ErrorCode::InvalidArgument) => "invalid_argument",
                Ok(ErrorCode::NotLeader) => "not_leader",
                Ok(ErrorCode::Unavailable) => "unavailable",
                Ok(ErrorCode::Indeterminate) => "indeterminate",
                _ => "other",
            },
        },
        Err(_) => "grpc_error",
    };
    let m = crate::metrics::metrics();
    m.requests.with_label_values(&[op, outcome]).inc();
    m.request_seconds
        .with_label_values(&[op])
        .observe(started.elapsed().as_secs_f64());
    r
}

/// Parses a gRPC `grpc-timeout` header value: digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The smallest key greater than every key with `prefix`; empty (unbounded) if none exists.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::{parse_grpc_timeout, prefix_end};
    use std::time::Duration;

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_garbage_is_ignored() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        for bad in ["", "m", "12", "x5m", "5x"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix_range() {
        assert_eq!(prefix_end(b"ab"), b"ac".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), Vec::<u8>::new());
    }
}
