//! Batch calls: several keys in one request. `batch_put` and `batch_delete` are one Raft entry
//! each (applied all or none, at most once across retries, like a single write);
//! `batch_get` is one read barrier and one consistent read of every key.
//!
//! In PD mode ([`Client::with_pd`]) a batch is cut by region: one request per region, each
//! with its own request id for writes, sent concurrently. The guarantees above then hold per
//! region only: a batch spanning regions is atomic, and read at one index, within each region,
//! and a write batch that succeeded in some regions but not in others fails with
//! [`Error::Indeterminate`](crate::Error::Indeterminate).

use rdb_proto::kv::{BatchDeleteRequest, BatchGetRequest, BatchPutRequest, KeyValue};

use crate::{pb_consistency, Client, Error, ReadConsistency, Result};

/// Most keys (or pairs) the server takes in one batch call.
pub const MAX_BATCH_KEYS: usize = 10_000;

impl Client {
    /// Writes every pair in one Raft entry: all or none (in PD mode: per region). Later pairs
    /// win over earlier ones with the same key.
    pub async fn batch_put<K, V>(&self, pairs: impl IntoIterator<Item = (K, V)>) -> Result<()>
    where
        K: Into<Vec<u8>>,
        V: Into<Vec<u8>>,
    {
        let pairs: Vec<KeyValue> = pairs
            .into_iter()
            .map(|(k, v)| KeyValue {
                key: k.into(),
                value: v.into(),
                meta: None,
            })
            .collect();
        let keys: Vec<&[u8]> = pairs.iter().map(|kv| kv.key.as_slice()).collect();
        let consistency = ReadConsistency::Linearizable;
        self.call_batch(
            &keys,
            true,
            consistency,
            |mut c, context, at, request_id| {
                let req = BatchPutRequest {
                    namespace: self.ns.wire_name(),
                    context,
                    pairs: at.iter().map(|&i| pairs[i].clone()).collect(),
                    request_id,
                };
                async move {
                    let r = c.batch_put(req).await?.into_inner();
                    Ok(((), r.error))
                }
            },
        )
        .await?;
        Ok(())
    }

    /// Reads every key as of one applied index (in PD mode: one per region); `None` for an
    /// absent key, in the order given.
    pub async fn batch_get<K: Into<Vec<u8>>>(
        &self,
        keys: impl IntoIterator<Item = K>,
        consistency: ReadConsistency,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let keys: Vec<Vec<u8>> = keys.into_iter().map(Into::into).collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let parts = self
            .call_batch(&refs, false, consistency, |mut c, context, at, _| {
                let req = BatchGetRequest {
                    namespace: self.ns.wire_name(),
                    context,
                    keys: at.iter().map(|&i| keys[i].clone()).collect(),
                    consistency: pb_consistency(consistency),
                };
                async move {
                    let r = c.batch_get(req).await?.into_inner();
                    let values: Vec<Option<Vec<u8>>> = r
                        .results
                        .into_iter()
                        .map(|g| g.found.then_some(g.value))
                        .collect();
                    Ok((values, r.error))
                }
            })
            .await?;
        if parts.len() == 1 {
            // One request for every key: the answer is already in the caller's order.
            return Ok(parts.into_iter().flat_map(|(_, values)| values).collect());
        }
        let mut out = vec![None; keys.len()];
        for (at, values) in parts {
            if values.len() != at.len() {
                return Err(Error::Unavailable(format!(
                    "a store answered {} values for {} keys",
                    values.len(),
                    at.len()
                )));
            }
            for (i, v) in at.into_iter().zip(values) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// Removes every key in one Raft entry: all or none (in PD mode: per region). Returns how
    /// many existed (for a retry the cluster had already applied, the count recorded the first
    /// time).
    pub async fn batch_delete<K: Into<Vec<u8>>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<u64> {
        let keys: Vec<Vec<u8>> = keys.into_iter().map(Into::into).collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let consistency = ReadConsistency::Linearizable;
        let parts = self
            .call_batch(
                &refs,
                true,
                consistency,
                |mut c, context, at, request_id| {
                    let req = BatchDeleteRequest {
                        namespace: self.ns.wire_name(),
                        context,
                        keys: at.iter().map(|&i| keys[i].clone()).collect(),
                        request_id,
                    };
                    async move {
                        let r = c.batch_delete(req).await?.into_inner();
                        Ok((r.deleted, r.error))
                    }
                },
            )
            .await?;
        Ok(parts.into_iter().map(|(_, deleted)| deleted).sum())
    }
}
