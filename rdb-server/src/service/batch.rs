//! The batch calls of the client service: `BatchPut` and `BatchDelete` (one Raft entry each,
//! applied all or none) and `BatchGet` (one read barrier, then every key read through one
//! RocksDB snapshot).

use rdb_proto::command::{self, command::Op};
use rdb_proto::kv::{
    BatchDeleteRequest, BatchDeleteResponse, BatchGetRequest, BatchGetResponse, BatchPutRequest,
    BatchPutResponse, GetResult,
};
use rdb_storage::CommandResult;
use tonic::{Request, Response, Status};

use super::kv::{err, KvService};
use crate::router::RequestError;

/// Most keys (or pairs) in one batch call.
pub const MAX_BATCH_KEYS: usize = 10_000;

fn check_count(n: usize) -> Result<(), RequestError> {
    if n == 0 {
        return Err(RequestError::InvalidArgument(
            "a batch needs at least one key".into(),
        ));
    }
    if n > MAX_BATCH_KEYS {
        return Err(RequestError::InvalidArgument(format!(
            "a batch of {n} keys is over the limit of {MAX_BATCH_KEYS}; split it"
        )));
    }
    Ok(())
}

impl KvService {
    /// A batch's keys: how many, and each within the key limit.
    fn check_keys(&self, keys: &[Vec<u8>]) -> Result<(), RequestError> {
        check_count(keys.len())?;
        keys.iter().try_for_each(|k| self.check_key(k))
    }

    pub(crate) async fn batch_put_inner(
        &self,
        request: Request<BatchPutRequest>,
    ) -> Result<Response<BatchPutResponse>, Status> {
        let deadline = self.deadline(&request);
        let r = request.into_inner();
        let res = async {
            check_count(r.pairs.len())?;
            for kv in &r.pairs {
                self.check_key(&kv.key)?;
                self.check_value(&kv.value)?;
            }
            let puts = r
                .pairs
                .into_iter()
                .map(|kv| command::Put {
                    key: kv.key,
                    value: kv.value,
                })
                .collect();
            let op = Op::Batch(command::Batch {
                puts,
                deletes: Vec::new(),
            });
            self.write(deadline, r.request_id, op, r.context).await
        }
        .await;
        match res {
            Ok(CommandResult::Batch { revision, .. }) => Ok(Response::new(BatchPutResponse {
                error: None,
                revision,
            })),
            Ok(_) => Err(crate::service::kv::unexpected_result("batch put")),
            Err(e) => err(e, |r: &mut BatchPutResponse, e| r.error = Some(e)),
        }
    }

    pub(crate) async fn batch_delete_inner(
        &self,
        request: Request<BatchDeleteRequest>,
    ) -> Result<Response<BatchDeleteResponse>, Status> {
        let deadline = self.deadline(&request);
        let r = request.into_inner();
        let res = async {
            self.check_keys(&r.keys)?;
            let deletes = r
                .keys
                .into_iter()
                .map(|key| command::Delete {
                    key,
                    condition: None,
                })
                .collect();
            let op = Op::Batch(command::Batch {
                puts: Vec::new(),
                deletes,
            });
            self.write(deadline, r.request_id, op, r.context).await
        }
        .await;
        match res {
            Ok(CommandResult::Batch { deleted, revision }) => {
                Ok(Response::new(BatchDeleteResponse {
                    error: None,
                    deleted,
                    revision,
                }))
            }
            Ok(_) => Err(crate::service::kv::unexpected_result("batch delete")),
            Err(e) => err(e, |r: &mut BatchDeleteResponse, e| r.error = Some(e)),
        }
    }

    pub(crate) async fn batch_get_inner(
        &self,
        request: Request<BatchGetRequest>,
    ) -> Result<Response<BatchGetResponse>, Status> {
        let deadline = self.deadline(&request);
        let r = request.into_inner();
        let res = async {
            self.check_keys(&r.keys)?;
            self.read_barrier(deadline, r.consistency, r.context, &r.keys)
                .await
        }
        .await;
        if let Err(e) = res {
            return err(e, |r: &mut BatchGetResponse, e| r.error = Some(e));
        }
        let values = match tokio::task::block_in_place(|| self.engine.get_many(&r.keys)) {
            Ok(v) => v,
            Err(e) => {
                return err(Self::read_failed(e)?, |r: &mut BatchGetResponse, e| {
                    r.error = Some(e)
                })
            }
        };
        let max = self.settings.max_response_bytes;
        let bytes: usize = values.iter().flatten().map(Vec::len).sum::<usize>()
            + r.keys.iter().map(Vec::len).sum::<usize>();
        if bytes > max {
            let e = RequestError::InvalidArgument(format!(
                "the values of this batch come to {bytes} bytes, over max_response_bytes \
                 ({max}); ask for fewer keys at a time"
            ));
            return err(e, |r: &mut BatchGetResponse, e| r.error = Some(e));
        }
        let results = values
            .into_iter()
            .map(|v| GetResult {
                found: v.is_some(),
                value: v.unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(BatchGetResponse {
            error: None,
            results,
        }))
    }
}
