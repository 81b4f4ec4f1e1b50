//! The client KV service. Errors travel as data in each response (`Error` with a code and,
//! for `NotLeader`, the leader's id and address), never as free text in gRPC metadata.

use std::sync::Arc;
use std::time::Duration;

use rdb_proto::command::{self, command::Op, Command};
use rdb_proto::kv::kv_server::Kv;
use rdb_proto::kv::{
    CasRequest, CasResponse, CheckRequest, CheckResponse, Consistency, DeleteRequest,
    DeleteResponse, Error as PbError, ErrorCode, GetRequest, GetResponse, HashRequest,
    HashResponse, KeyValue, LeaderHint as PbLeaderHint, PutRequest, PutResponse, RequestId,
    ScanRequest, ScanResponse, StatusRequest, StatusResponse,
};
use rdb_storage::{CommandResult, Engine};
use tonic::{Request, Response, Status};

use crate::config::Settings;
use crate::router::{Mailbox, Msg, RequestError};

/// Serves the client API of one node.
#[derive(Clone)]
pub struct KvService {
    mailbox: Mailbox,
    engine: Engine,
    settings: Arc<Settings>,
    cluster_id: u64,
    client_addr: String,
}

impl KvService {
    /// A service that proposes through `mailbox` and reads from `engine`.
    pub fn new(
        mailbox: Mailbox,
        engine: Engine,
        settings: Arc<Settings>,
        cluster_id: u64,
        client_addr: String,
    ) -> KvService {
        KvService {
            mailbox,
            engine,
            settings,
            cluster_id,
            client_addr,
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.settings.request_timeout_ms)
    }

    fn check_key(&self, key: &[u8]) -> Result<(), RequestError> {
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

    fn check_value(&self, value: &[u8]) -> Result<(), RequestError> {
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
    async fn write(&self, id: Option<RequestId>, op: Op) -> Result<CommandResult, RequestError> {
        let id = id.unwrap_or_default();
        let cmd = Command {
            client_id: id.client_id,
            seq: id.seq,
            op: Some(op),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let deadline = tokio::time::Instant::now() + self.timeout();
        tokio::time::timeout_at(deadline, self.mailbox.send(Msg::Propose { cmd, tx }))
            .await
            .map_err(|_| RequestError::Unavailable("node is overloaded".into()))??;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(RequestError::Indeterminate("node stopped".into())),
            Err(_) => Err(RequestError::Indeterminate(format!(
                "no outcome within {} ms",
                self.settings.request_timeout_ms
            ))),
        }
    }

    /// Waits until reading local state is linearizable (ReadIndex), unless serializable.
    async fn read_barrier(&self, consistency: i32) -> Result<(), RequestError> {
        if consistency == Consistency::Serializable as i32 || cfg!(feature = "inject-stale-reads") {
            return Ok(());
        }
        if consistency != Consistency::Linearizable as i32 {
            return Err(RequestError::InvalidArgument(format!(
                "unknown consistency {consistency}"
            )));
        }
        match tokio::time::timeout(self.timeout(), self.mailbox.call(|tx| Msg::Read { tx })).await {
            Ok(r) => r?,
            Err(_) => Err(RequestError::Unavailable(format!(
                "no quorum confirmed leadership within {} ms",
                self.settings.request_timeout_ms
            ))),
        }
    }

    fn storage_error(e: rdb_storage::Error) -> Status {
        match e {
            // The data is being replaced by a snapshot for a moment: try again (or elsewhere).
            rdb_storage::Error::SnapshotInstalling => Status::unavailable(e.to_string()),
            e => Status::internal(format!("storage: {e}")),
        }
    }
}

/// The wire form of a request error.
pub fn to_pb(e: RequestError) -> PbError {
    let message = match &e {
        RequestError::InvalidArgument(m)
        | RequestError::Unavailable(m)
        | RequestError::Indeterminate(m) => m.clone(),
        RequestError::NotLeader(Some(h)) => format!("node {} leads, at {}", h.id, h.addr),
        RequestError::NotLeader(None) => "not leader".into(),
    };
    match e {
        RequestError::InvalidArgument(_) => PbError {
            code: ErrorCode::InvalidArgument as i32,
            message,
            leader: None,
        },
        RequestError::NotLeader(hint) => PbError {
            code: ErrorCode::NotLeader as i32,
            message,
            leader: hint.map(|h| PbLeaderHint {
                id: h.id,
                addr: h.addr,
            }),
        },
        RequestError::Unavailable(_) => PbError {
            code: ErrorCode::Unavailable as i32,
            message,
            leader: None,
        },
        RequestError::Indeterminate(_) => PbError {
            code: ErrorCode::Indeterminate as i32,
            message,
            leader: None,
        },
    }
}

fn err<T: Default>(
    e: RequestError,
    set: impl FnOnce(&mut T, PbError),
) -> Result<Response<T>, Status> {
    let mut resp = T::default();
    set(&mut resp, to_pb(e));
    Ok(Response::new(resp))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let r = request.into_inner();
        let res = async {
            self.check_key(&r.key)?;
            self.check_value(&r.value)?;
            self.write(
                r.request_id,
                Op::Put(command::Put {
                    key: r.key,
                    value: r.value,
                }),
            )
            .await
        }
        .await;
        match res {
            Ok(_) => Ok(Response::new(PutResponse { error: None })),
            Err(e) => err(e, |r: &mut PutResponse, e| r.error = Some(e)),
        }
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let r = request.into_inner();
        let res = async {
            self.check_key(&r.key)?;
            self.read_barrier(r.consistency).await
        }
        .await;
        if let Err(e) = res {
            return err(e, |r: &mut GetResponse, e| r.error = Some(e));
        }
        let value = self.engine.get(&r.key).map_err(Self::storage_error)?;
        Ok(Response::new(GetResponse {
            error: None,
            found: value.is_some(),
            value: value.unwrap_or_default(),
        }))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let r = request.into_inner();
        let res = async {
            self.check_key(&r.key)?;
            self.write(r.request_id, Op::Delete(command::Delete { key: r.key }))
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

    async fn scan(&self, request: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
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
            self.read_barrier(r.consistency).await
        }
        .await;
        if let Err(e) = res {
            return err(e, |r: &mut ScanResponse, e| r.error = Some(e));
        }
        let (start, end) = if r.prefix.is_empty() {
            (r.start, r.end)
        } else {
            (r.prefix.clone(), prefix_end(&r.prefix))
        };
        let limit = if r.limit == 0 { max } else { r.limit } as usize;
        let page = self
            .engine
            .scan(&start, &end, limit)
            .map_err(Self::storage_error)?;
        Ok(Response::new(ScanResponse {
            error: None,
            kvs: page
                .kvs
                .into_iter()
                .map(|(key, value)| KeyValue { key, value })
                .collect(),
            more: page.more,
            next_start: Vec::new(),
        }))
    }

    async fn cas(&self, request: Request<CasRequest>) -> Result<Response<CasResponse>, Status> {
        let r = request.into_inner();
        let res = async {
            self.check_key(&r.key)?;
            self.check_value(&r.new_value)?;
            if let Some(e) = &r.expected {
                self.check_value(e)?;
            }
            self.write(
                r.request_id,
                Op::Cas(command::Cas {
                    key: r.key,
                    expected: r.expected,
                    new_value: r.new_value,
                }),
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

    async fn status(
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
        }))
    }

    async fn check(
        &self,
        _request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        Err(Status::unimplemented("check: not yet implemented"))
    }

    async fn hash(&self, _request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(Status::unimplemented("hash: not yet implemented"))
    }
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
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix_range() {
        assert_eq!(prefix_end(b"ab"), b"ac".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), Vec::<u8>::new());
    }
}
