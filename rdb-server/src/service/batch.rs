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

use super::kv::{err, namespace, KvService};
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
    /// A batch's keys as stored in the namespace `ns` names: how many, and each within the
    /// key limit.
    fn stored_keys(&self, ns: &str, keys: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, RequestError> {
        check_count(keys.len())?;
        let ns = namespace(ns)?;
        keys.into_iter().map(|k| self.stored_key(&ns, k)).collect()
    }

    pub(crate) async fn batch_put_inner(
        &self,
        request: Request<BatchPutRequest>,
    ) -> Result<Response<BatchPutResponse>, Status> {
        let deadline = self.deadline(&request);
        let r = request.into_inner();
        let res = async {
            check_count(r.pairs.len())?;
            let ns = namespace(&r.namespace)?;
            let mut puts = Vec::with_capacity(r.pairs.len());
            for kv in r.pairs {
                self.check_value(&kv.value)?;
                puts.push(command::Put {
                    key: self.stored_key(&ns, kv.key)?,
                    value: kv.value,
                });
            }
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
            let deletes = self
                .stored_keys(&r.namespace, r.keys)?
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
        let mut r = request.into_inner();
        let res = async {
            let keys = self.stored_keys(&r.namespace, std::mem::take(&mut r.keys))?;
            self.read_barrier(deadline, r.consistency, r.context, &keys)
                .await?;
            Ok(keys)
        }
        .await;
        let keys = match res {
            Ok(keys) => keys,
            Err(e) => return err(e, |r: &mut BatchGetResponse, e| r.error = Some(e)),
        };
        let values = match tokio::task::block_in_place(|| self.engine.get_many(&keys)) {
            Ok(v) => v,
            Err(e) => {
                return err(Self::read_failed(e)?, |r: &mut BatchGetResponse, e| {
                    r.error = Some(e)
                })
            }
        };
        let max = self.settings.max_response_bytes;
        let bytes: usize = values.iter().flatten().map(Vec::len).sum::<usize>()
            + keys.iter().map(Vec::len).sum::<usize>();
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
