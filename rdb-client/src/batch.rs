//! Batch calls: several keys in one request. `batch_put` and `batch_delete` are one Raft entry
//! each (applied all or none, at most once across retries, like a single write);
//! `batch_get` is one read barrier and one consistent read of every key.

use rdb_proto::kv::{BatchDeleteRequest, BatchGetRequest, BatchPutRequest, KeyValue};

use crate::{pb_consistency, Client, ReadConsistency, Result};

/// Most keys (or pairs) the server takes in one batch call.
pub const MAX_BATCH_KEYS: usize = 10_000;

impl Client {
    /// Writes every pair in one Raft entry: all or none. Later pairs win over earlier ones
    /// with the same key.
    pub async fn batch_put<K, V>(&self, pairs: impl IntoIterator<Item = (K, V)>) -> Result<()>
    where
        K: Into<Vec<u8>>,
        V: Into<Vec<u8>>,
    {
        let req = BatchPutRequest {
            context: None,
            pairs: pairs
                .into_iter()
                .map(|(k, v)| KeyValue {
                    key: k.into(),
                    value: v.into(),
                })
                .collect(),
            request_id: Some(self.next_request_id()),
        };
        self.call(true, move |mut c| {
            let req = req.clone();
            async move {
                let r = c.batch_put(req).await?.into_inner();
                Ok(((), r.error))
            }
        })
        .await
    }

    /// Reads every key as of one applied index; `None` for an absent key, in the order given.
    pub async fn batch_get<K: Into<Vec<u8>>>(
        &self,
        keys: impl IntoIterator<Item = K>,
        consistency: ReadConsistency,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let req = BatchGetRequest {
            context: None,
            keys: keys.into_iter().map(Into::into).collect(),
            consistency: pb_consistency(consistency),
        };
        self.call_read(consistency, self.deadline(), move |mut c| {
            let req = req.clone();
            async move {
                let r = c.batch_get(req).await?.into_inner();
                let values = r
                    .results
                    .into_iter()
                    .map(|g| g.found.then_some(g.value))
                    .collect();
                Ok((values, r.error))
            }
        })
        .await
    }

    /// Removes every key in one Raft entry: all or none. Returns how many existed (for a
    /// retry the cluster had already applied, the count recorded the first time).
    pub async fn batch_delete<K: Into<Vec<u8>>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<u64> {
        let req = BatchDeleteRequest {
            context: None,
            keys: keys.into_iter().map(Into::into).collect(),
            request_id: Some(self.next_request_id()),
        };
        self.call(true, move |mut c| {
            let req = req.clone();
            async move {
                let r = c.batch_delete(req).await?.into_inner();
                Ok((r.deleted, r.error))
            }
        })
        .await
    }
}
