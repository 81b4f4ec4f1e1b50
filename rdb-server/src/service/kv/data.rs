//! The single-key calls of the client service (`Put`, `Get`, `Delete`, `Cas`) and `Scan`, one
//! region's part of its range per page.

use rdb_proto::command::{self, command::Op};
use rdb_proto::kv::{
    CasRequest, CasResponse, CompactRequest, CompactResponse, DeleteRequest, DeleteResponse,
    GetRequest, GetResponse, KeyMeta, KeyValue, PutRequest, PutResponse, ScanRequest, ScanResponse,
};
use rdb_storage::keys::Space;
use rdb_storage::region::Region;
use rdb_storage::CommandResult;
use tonic::{Request, Response, Status};

use super::{err, namespace, prefix_end, KvService};
use crate::router::RequestError;

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

/// A key's versions as the API shows them.
fn key_meta(m: &rdb_storage::mvcc::Meta) -> KeyMeta {
    KeyMeta {
        create_revision: m.create_revision,
        mod_revision: m.mod_revision,
        version: m.version,
    }
}

impl KvService {
    /// `Put`: one key written through its region's log.
    pub(super) async fn put_inner(
        &self,
        request: Request<PutRequest>,
    ) -> Result<Response<PutResponse>, Status> {
        let deadline = self.deadline(&request);
        let r = request.into_inner();
        let res = async {
            let key = self.stored_key(&namespace(&r.namespace)?, r.key)?;
            self.check_value(&r.value)?;
            self.write(
                deadline,
                r.request_id,
                Op::Put(command::Put {
                    key,
                    value: r.value,
                }),
                r.context,
            )
            .await
        }
        .await;
        match res {
            Ok(CommandResult::Put { revision }) => Ok(Response::new(PutResponse {
                error: None,
                revision,
            })),
            Ok(_) => Err(super::unexpected_result("put")),
            Err(e) => err(e, |r: &mut PutResponse, e| r.error = Some(e)),
        }
    }

    /// `Compact`: the history below a revision dropped through the region's log.
    pub(super) async fn compact_inner(
        &self,
        request: Request<CompactRequest>,
    ) -> Result<Response<CompactResponse>, Status> {
        let deadline = self.deadline(&request);
        let CompactRequest {
            revision,
            up_to_last,
            context,
        } = request.into_inner();
        let op = Op::Compact(command::Compact {
            revision,
            up_to_last,
        });
        match self.write(deadline, None, op, context).await {
            // Refused at apply (the same on every replica): the region has not reached it.
            Ok(CommandResult::Compacted { last, .. }) if revision > last && !up_to_last => {
                let e = RequestError::FutureRevision(
                    rdb_storage::Error::FutureRevision { revision, last }.to_string(),
                );
                err(e, |r: &mut CompactResponse, e| r.error = Some(e))
            }
            Ok(CommandResult::Compacted { compacted, last }) => {
                Ok(Response::new(CompactResponse {
                    error: None,
                    compacted,
                    revision: last,
                }))
            }
            Ok(_) => Err(super::unexpected_result("compact")),
            Err(e) => err(e, |r: &mut CompactResponse, e| r.error = Some(e)),
        }
    }

    /// PD mode: a read at `revision`, above its region's last revision, first moves that up
    /// to it through the region's log (`Advance`), so no write stamped at or below it applies
    /// there later and the state read at `revision` stays as read. A revision above every
    /// timestamp given so far is refused: no write can have it yet, and advancing to it would
    /// turn away every write stamped below it.
    async fn advance(
        &self,
        deadline: tokio::time::Instant,
        revision: u64,
        region: u64,
    ) -> Result<(), RequestError> {
        let Some(stamper) = &self.stamps else {
            return Err(RequestError::InvalidArgument(
                "only a PD-mode store advances a region's revision".into(),
            ));
        };
        let bound = stamper.bound().await;
        if revision > bound {
            return Err(RequestError::FutureRevision(format!(
                "revision {revision} is not reached yet (the newest timestamp is {bound})"
            )));
        }
        let op = Op::Advance(command::Advance { revision });
        // The region read, whatever its epoch now: advancing a region that changed since only
        // turns away more stale stamps.
        let context = rdb_proto::kv::RegionContext {
            region_id: region,
            epoch: None,
        };
        match self.write(deadline, None, op, Some(context)).await? {
            CommandResult::Advanced { .. } => Ok(()),
            _ => Err(RequestError::Unavailable(
                "the region did not advance its revision".into(),
            )),
        }
    }

    /// `Get`: one key read after the read barrier the request asks for, as of the revision it
    /// asks (0: the newest), with its version and the revision the read reflects.
    pub(super) async fn get_inner(
        &self,
        request: Request<GetRequest>,
    ) -> Result<Response<GetResponse>, Status> {
        let deadline = self.deadline(&request);
        let mut r = request.into_inner();
        let res = async {
            let key = self.stored_key(&namespace(&r.namespace)?, std::mem::take(&mut r.key))?;
            let region = self
                .read_barrier(
                    deadline,
                    r.consistency,
                    r.context,
                    std::slice::from_ref(&key),
                )
                .await?;
            Ok((region, key))
        }
        .await;
        let (region, key) = match res {
            Ok(read) => read,
            Err(e) => return err(e, |r: &mut GetResponse, e| r.error = Some(e)),
        };
        // A point read is short, but may wait on the disk: let the runtime move other tasks
        // off this worker meanwhile.
        let read_at = || {
            tokio::task::block_in_place(|| {
                self.engine
                    .read_versioned(Space::Region(region.id), &key, r.revision)
            })
        };
        let read = match read_at() {
            Err(rdb_storage::Error::FutureRevision { revision, .. }) if self.stamps.is_some() => {
                if let Err(e) = self.advance(deadline, revision, region.id).await {
                    return err(e, |r: &mut GetResponse, e| r.error = Some(e));
                }
                read_at()
            }
            read => read,
        };
        let (revs, version) = match read {
            Ok(v) => v,
            Err(e) => {
                return err(Self::read_failed(e)?, |r: &mut GetResponse, e| {
                    r.error = Some(e)
                })
            }
        };
        let revision = if r.revision == 0 {
            revs.last
        } else {
            r.revision
        };
        Ok(Response::new(match version {
            Some(v) => GetResponse {
                error: None,
                found: true,
                value: v.value,
                meta: Some(key_meta(&v.meta)),
                revision,
            },
            None => GetResponse {
                revision,
                ..Default::default()
            },
        }))
    }

    /// `Delete`: one key removed through its region's log; says whether it existed.
    pub(super) async fn delete_inner(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let deadline = self.deadline(&request);
        let r = request.into_inner();
        let res = async {
            let key = self.stored_key(&namespace(&r.namespace)?, r.key)?;
            self.write(
                deadline,
                r.request_id,
                Op::Delete(command::Delete {
                    key,
                    condition: r.condition,
                }),
                r.context,
            )
            .await
        }
        .await;
        match res {
            Ok(CommandResult::Delete { existed, revision }) => Ok(Response::new(DeleteResponse {
                existed,
                revision,
                ..Default::default()
            })),
            Ok(CommandResult::DeleteRefused { current, revision }) => {
                Ok(Response::new(DeleteResponse {
                    existed: current.is_some(),
                    revision,
                    refused: true,
                    current_meta: current.as_ref().map(key_meta),
                    ..Default::default()
                }))
            }
            Ok(_) => Err(super::unexpected_result("delete")),
            Err(e) => err(e, |r: &mut DeleteResponse, e| r.error = Some(e)),
        }
    }

    /// `Scan`: one page of the range, within one region.
    pub(super) async fn scan_inner(
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
            // The range as stored: always bounded, never past the namespace.
            let ns = namespace(&r.namespace)?;
            let (start, end) = if r.prefix.is_empty() {
                ns.range(&r.start, &r.end)
            } else {
                ns.range(&r.prefix, &prefix_end(&r.prefix))
            };
            if start >= end {
                // Nothing there (a range of `default` in rdb's own keys): no read to make.
                return Ok(None);
            }
            let region = self
                .read_barrier(
                    deadline,
                    r.consistency,
                    r.context,
                    std::slice::from_ref(&start),
                )
                .await?;
            Ok(Some((region, ns, start, end)))
        }
        .await;
        let (region, ns, start, end) = match res {
            Ok(Some(scan)) => scan,
            Ok(None) => return Ok(Response::new(ScanResponse::default())),
            Err(e) => return err(e, |r: &mut ScanResponse, e| r.error = Some(e)),
        };
        // One region's part of the range; the client goes on at the region's end.
        let (start, end, region_end) = clip_to_region(start, end, &region);
        let limit = if r.limit == 0 { max } else { r.limit } as usize;
        let max_bytes = self.settings.max_response_bytes;
        let (revision, with_meta, space) = (r.revision, r.with_meta, Space::Region(region.id));
        // A scan can read a lot: off the async workers.
        let scan = || {
            let (engine, start, end) = (self.engine.clone(), start.clone(), end.clone());
            tokio::task::spawn_blocking(move || {
                engine
                    .scan_versioned(space, &start, &end, revision, limit, max_bytes)
                    .map(|(revs, page)| (revs.last, page))
            })
        };
        let scanned = match scan()
            .await
            .map_err(|e| Status::internal(format!("scan task failed: {e}")))?
        {
            Err(rdb_storage::Error::FutureRevision { revision, .. }) if self.stamps.is_some() => {
                if let Err(e) = self.advance(deadline, revision, region.id).await {
                    return err(e, |r: &mut ScanResponse, e| r.error = Some(e));
                }
                scan()
                    .await
                    .map_err(|e| Status::internal(format!("scan task failed: {e}")))?
            }
            scanned => scanned,
        };
        let (last, page) = match scanned {
            Ok(page) => page,
            Err(e) => {
                return err(Self::read_failed(e)?, |r: &mut ScanResponse, e| {
                    r.error = Some(e)
                })
            }
        };
        let revision = if r.revision == 0 { last } else { r.revision };
        // Keys go back as the user's (every stored key in the range is the namespace's).
        let user = |k: &[u8]| ns.user_key(k).unwrap_or(k).to_vec();
        let next_start = match page.kvs.last() {
            Some((k, _)) if page.more => {
                let mut next = user(k);
                next.push(0);
                next
            }
            // The region ended before the range did: the next page is the next region's.
            _ => region_end.as_deref().map(user).unwrap_or_default(),
        };
        Ok(Response::new(ScanResponse {
            error: None,
            kvs: page
                .kvs
                .into_iter()
                .map(|(key, v)| KeyValue {
                    key: user(&key),
                    meta: with_meta.then(|| key_meta(&v.meta)),
                    value: v.value,
                })
                .collect(),
            more: page.more || region_end.is_some(),
            next_start,
            revision,
        }))
    }

    /// `Cas`: compare-and-swap of one key through its region's log.
    pub(super) async fn cas_inner(
        &self,
        request: Request<CasRequest>,
    ) -> Result<Response<CasResponse>, Status> {
        let deadline = self.deadline(&request);
        let r = request.into_inner();
        let res = async {
            let key = self.stored_key(&namespace(&r.namespace)?, r.key)?;
            self.check_value(&r.new_value)?;
            if let Some(e) = &r.expected {
                self.check_value(e)?;
            }
            self.write(
                deadline,
                r.request_id,
                Op::Cas(command::Cas {
                    key,
                    expected: r.expected,
                    new_value: r.new_value,
                    condition: r.condition,
                }),
                r.context,
            )
            .await
        }
        .await;
        match res {
            Ok(CommandResult::Cas {
                succeeded,
                current,
                revision,
                current_meta,
            }) => Ok(Response::new(CasResponse {
                error: None,
                succeeded,
                current,
                revision,
                current_meta: current_meta.as_ref().map(key_meta),
            })),
            Ok(_) => Err(super::unexpected_result("cas")),
            Err(e) => err(e, |r: &mut CasResponse, e| r.error = Some(e)),
        }
    }
}
