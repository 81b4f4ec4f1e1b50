//! The client KV service. Errors travel as data in each response (`Error` with a code and,
//! for `NotLeader`, the leader's id and address), never as free text in gRPC metadata.

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use rdb_proto::command::{command::Op, Command};
use rdb_proto::kv::kv_server::Kv;
use rdb_proto::kv::{
    CasRequest, CasResponse, CheckRequest, CheckResponse, CompactRequest, CompactResponse,
    Consistency, DeleteRequest, DeleteResponse, Error as PbError, ErrorCode, GetRequest,
    GetResponse, HashRequest, HashResponse, LeaderHint as PbLeaderHint, PutRequest, PutResponse,
    RegionContext, RequestId, ScanRequest, ScanResponse, StatusRequest, StatusResponse,
};
use rdb_proto::namespace::Namespace;

use super::stamps::{StampRange, Stamper};
use rdb_storage::region::Region;
use rdb_storage::{CommandResult, Engine};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::config::Settings;
use crate::members::SharedDirectory;
use crate::router::{Mailbox, Msg, RegionRoute, RequestError};
use crate::store::hashes::StoreHashes;

mod data;
mod status;

/// Serves the client API of one store (a config-file node is a store hosting region 1).
/// Every request goes to a region: the one its context names, or the one holding its first
/// key (`Msg::RegionPropose`, `Msg::RegionRead`).
#[derive(Clone)]
pub struct KvService {
    pub(crate) mailbox: Mailbox,
    pub(crate) engine: Engine,
    /// The hosted regions' hash results, which answer `Hash`.
    hashes: StoreHashes,
    /// PD mode: stamps writes with PD timestamps, their revisions (None: a config-file node,
    /// whose revisions count its writes).
    pub(crate) stamps: Option<Arc<Stamper>>,
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
            stamps: None,
        }
    }

    /// This service stamping writes with PD timestamps (a PD-mode store).
    pub fn with_stamps(mut self, stamper: Stamper) -> KvService {
        self.stamps = Some(Arc::new(stamper));
        self
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

    /// A request's key as stored in the namespace it names: checked as [`Self::check_key`],
    /// then mapped (specs/018-versions).
    pub(crate) fn stored_key(&self, ns: &Namespace, key: Vec<u8>) -> Result<Vec<u8>, RequestError> {
        self.check_key(&key)?;
        if ns.is_default() && !key.starts_with(rdb_proto::namespace::RESERVED) {
            return Ok(key);
        }
        ns.key(&key).map_err(RequestError::InvalidArgument)
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
    ///
    /// PD mode: a write is given PD timestamps first (the store task picks its revision among
    /// them), and stamped again when its region refused the stamp as below its last revision.
    pub(crate) async fn write(
        &self,
        deadline: Instant,
        id: Option<RequestId>,
        op: Op,
        context: Option<RegionContext>,
    ) -> Result<CommandResult, RequestError> {
        let id = id.unwrap_or_default();
        let keys = op_keys(&op);
        let stamper = match op {
            Op::Put(_) | Op::Delete(_) | Op::Cas(_) | Op::Batch(_) => self.stamps.as_deref(),
            _ => None,
        };
        let data = Command {
            client_id: id.client_id,
            seq: id.seq,
            op: Some(op),
            stamp: 0,
        }
        .encode_to_vec();
        let Some(stamper) = stamper else {
            return self
                .propose(deadline, route(context, keys), data, None)
                .await;
        };
        let mut above = 0;
        loop {
            let stamp = stamper.stamp(above).await;
            match self
                .propose(
                    deadline,
                    route(context, keys.clone()),
                    data.clone(),
                    Some(stamp),
                )
                .await
            {
                Ok(CommandResult::StaleStamp { last }) => {
                    crate::metrics::metrics().restamps.inc();
                    above = last;
                }
                outcome => return outcome,
            }
        }
    }

    /// Proposes one encoded command, stamped by the store task from `stamp`, and waits for its
    /// outcome (see [`Self::write`]).
    async fn propose(
        &self,
        deadline: Instant,
        route: RegionRoute,
        data: Vec<u8>,
        stamp: Option<StampRange>,
    ) -> Result<CommandResult, RequestError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let msg = Msg::RegionPropose {
            route,
            data,
            stamp,
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
            rdb_storage::Error::Compacted { .. } => Ok(RequestError::Compacted(e.to_string())),
            rdb_storage::Error::FutureRevision { .. } => {
                Ok(RequestError::FutureRevision(e.to_string()))
            }
            e => Err(Self::storage_error(e)),
        }
    }
}

/// The namespace a request names (empty: `default`).
pub(crate) fn namespace(name: &str) -> Result<Namespace, RequestError> {
    Namespace::parse(name).map_err(RequestError::InvalidArgument)
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
        | Op::Compact(_)
        | Op::Advance(_)
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
        | RequestError::RegionNotFound(m)
        | RequestError::Compacted(m)
        | RequestError::FutureRevision(m) => m.clone(),
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
        RequestError::Compacted(_) => plain(ErrorCode::Compacted, message),
        RequestError::FutureRevision(_) => plain(ErrorCode::FutureRevision, message),
    }
}

/// The answer when applying a call gave the result of another kind of command: a defect of
/// the server, said as such (the command's own result is not shown: it is not for people).
pub(crate) fn unexpected_result(call: &str) -> Status {
    Status::internal(format!(
        "the {call} was applied but gave another command's result (a server defect)"
    ))
}

pub(crate) fn err<T: Default>(
    e: RequestError,
    set: impl FnOnce(&mut T, PbError),
) -> Result<Response<T>, Status> {
    let mut resp = T::default();
    set(&mut resp, to_pb(e));
    Ok(Response::new(resp))
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

    async fn compact(
        &self,
        request: Request<CompactRequest>,
    ) -> Result<Response<CompactResponse>, Status> {
        self.compact_inner(request).await
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
