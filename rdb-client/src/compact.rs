//! Compaction by hand (specs/018-versions): the history below a revision dropped through each
//! region's log, so every replica refuses reads below it from then on.

use rdb_proto::kv::CompactRequest;

use crate::{escape_bytes, Client, Error, NamespaceMode, Result};

impl Client {
    /// Drops the history below `revision`; returns the compacted revision (PD mode: the
    /// lowest of the regions').
    ///
    /// A config-file cluster's leader proposes the compaction; a revision the cluster has not
    /// reached fails with [`Error::FutureRevision`], one at or below the compacted revision
    /// changes nothing. A PD-mode client compacts region after region along the key space (a
    /// region split meanwhile carries its compacted revision to both halves); each region
    /// counts its own revisions, so one that has not reached `revision` compacts all of its
    /// history instead.
    pub async fn compact(&self, revision: u64) -> Result<u64> {
        let deadline = self.deadline();
        let Some(routing) = &self.inner.routing else {
            return self
                .call_until(true, deadline, |mut c| async move {
                    let req = CompactRequest {
                        revision,
                        up_to_last: false,
                        context: None,
                    };
                    let r = c.compact(req).await?.into_inner();
                    Ok((r.compacted, r.error))
                })
                .await;
        };
        // Along the key space as stored, every namespace's keys included: a client bound to
        // `default` routes by the key itself.
        let walker = self.bound_to(Default::default(), NamespaceMode::Strong);
        let mut key = Vec::new();
        let mut lowest = u64::MAX;
        loop {
            let (id, compacted) = walker
                .call_key(true, &key, deadline, |mut c, context| async move {
                    let id = context.as_ref().map_or(0, |c| c.region_id);
                    let req = CompactRequest {
                        revision,
                        up_to_last: true,
                        context,
                    };
                    let r = c.compact(req).await?.into_inner();
                    Ok(((id, r.compacted), r.error))
                })
                .await?;
            lowest = lowest.min(compacted);
            let end = match routing.cache.get(id) {
                Some(cached) => cached.region.end_key,
                None => {
                    return Err(Error::Unavailable(format!(
                        "compact: region {id} left the client's region cache while it was \
                         compacted; run it again"
                    )))
                }
            };
            if end.is_empty() {
                return Ok(lowest);
            }
            if end <= key {
                return Err(Error::Unavailable(format!(
                    "compact: region {id} ends at '{}', before '{}' where it began",
                    escape_bytes(&end),
                    escape_bytes(&key)
                )));
            }
            key = end;
        }
    }
}
