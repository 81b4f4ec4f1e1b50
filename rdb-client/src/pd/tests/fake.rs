//! A fake PD node that speaks the real proto, with just enough state for the client's calls
//! and knobs for the answers the tests need (NOT_LEADER with or without a hint, UNAVAILABLE,
//! INDETERMINATE, held or short TSO answers, another cluster, paged scans).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdb_proto::pd as pb;
use rdb_proto::pd::pd_server::{Pd, PdServer};
use tonic::{Request, Response, Status};

use super::*;

/// A PD node with just enough state for the client's calls (also the PD of
/// `crate::routing` tests).
#[derive(Default)]
pub(crate) struct Fake {
    pub(super) id: u64,
    /// `Some(hint)`: answer everything NOT_LEADER, with the hint's client address if non-empty.
    pub(super) not_leader: Option<String>,
    /// Answer this many calls UNAVAILABLE first.
    pub(super) unavailable_for: AtomicU32,
    /// Answer this many calls INDETERMINATE first.
    pub(super) indeterminate_for: AtomicU32,
    /// Answer every call UNAVAILABLE.
    pub(super) always_unavailable: bool,
    /// Every call seen (answered with an error or not).
    pub(super) calls: AtomicU32,
    /// Tso requests answered with timestamps.
    pub(super) tso_requests: AtomicU32,
    /// Give at most this many timestamps per request (`None`: as many as asked; PD may give
    /// fewer, and a count of 0 is a malformed answer).
    pub(super) tso_max: Option<u32>,
    /// Tso requests never answer while this is set.
    pub(super) tso_hold: AtomicBool,
    /// The next timestamp (physical, logical).
    pub(super) clock: Mutex<(u64, u64)>,
    pub(super) next_id: Mutex<u64>,
    pub(super) bootstrapped: AtomicBool,
    pub(super) stores: Mutex<BTreeMap<u64, pb::Store>>,
    pub(super) regions: Mutex<BTreeMap<u64, pb::RegionHeartbeatRequest>>,
    pub(super) members: Vec<pb::Member>,
    /// This PD's cluster id; a request stamped with another is refused CLUSTER_MISMATCH.
    pub(super) cluster_id: u64,
    /// The cluster id stamped on the last request (0: none).
    pub(super) last_stamp: AtomicU64,
    /// Answer scans in pages of this many regions (0: one page).
    pub(super) scan_page: usize,
}

fn pb_err(code: pb::ErrorCode, message: &str) -> Option<pb::Error> {
    Some(pb::Error {
        code: code as i32,
        message: message.into(),
        leader: None,
    })
}

impl Fake {
    /// The error this node answers before looking at the request, if any.
    fn gate(&self, meta: &tonic::metadata::MetadataMap) -> Option<pb::Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let stamp = meta
            .get(pb::CLUSTER_ID_METADATA)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .unwrap_or(0);
        self.last_stamp.store(stamp, Ordering::SeqCst);
        if stamp != 0 && stamp != self.cluster_id {
            return pb_err(
                pb::ErrorCode::ClusterMismatch,
                &format!("PD {} is not {stamp}", self.cluster_id),
            );
        }
        if let Some(hint) = &self.not_leader {
            return Some(pb::Error {
                code: pb::ErrorCode::NotLeader as i32,
                message: "not leader".into(),
                leader: (!hint.is_empty()).then(|| pb::Member {
                    id: 1,
                    client_addr: hint.clone(),
                    ..Default::default()
                }),
            });
        }
        let take = |n: &AtomicU32| {
            n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
                .is_ok()
        };
        if self.always_unavailable || take(&self.unavailable_for) {
            return pb_err(pb::ErrorCode::Unavailable, "no quorum");
        }
        if take(&self.indeterminate_for) {
            return pb_err(pb::ErrorCode::Indeterminate, "proposal outcome unknown");
        }
        None
    }

    fn region_response(&self, r: Option<&pb::RegionHeartbeatRequest>) -> pb::GetRegionResponse {
        match r {
            Some(r) => pb::GetRegionResponse {
                error: None,
                region: r.region.clone(),
                leader: r.leader,
                approximate_size: r.approximate_size,
                approximate_keys: r.approximate_keys,
            },
            None => pb::GetRegionResponse {
                error: pb_err(pb::ErrorCode::NotFound, "no such region"),
                ..Default::default()
            },
        }
    }
}

struct FakePd(Arc<Fake>);

impl std::ops::Deref for FakePd {
    type Target = Fake;
    fn deref(&self) -> &Fake {
        &self.0
    }
}

type TsoStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::TsoResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Pd for FakePd {
    async fn tso(&self, r: Request<pb::TsoRequest>) -> Result<Response<pb::TsoResponse>, Status> {
        if let Some(error) = self.gate(r.metadata()) {
            return Ok(Response::new(pb::TsoResponse {
                error: Some(error),
                ..Default::default()
            }));
        }
        if self.tso_hold.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let asked = r.into_inner().count;
        let count = u64::from(self.tso_max.map_or(asked, |m| asked.min(m)));
        // Let requests overlap, as a real leader's round trip does.
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.tso_requests.fetch_add(1, Ordering::SeqCst);
        let mut clock = self.clock.lock().unwrap();
        if clock.1 + count > 1 << 16 {
            *clock = (clock.0 + 1, 0);
        }
        let first = pb::Timestamp {
            physical: clock.0,
            logical: clock.1,
        };
        clock.1 += count;
        Ok(Response::new(pb::TsoResponse {
            error: None,
            first: Some(first),
            count: count as u32,
        }))
    }

    type TsoStreamStream = TsoStream;
    async fn tso_stream(
        &self,
        _: Request<tonic::Streaming<pb::TsoRequest>>,
    ) -> Result<Response<TsoStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn alloc_id(
        &self,
        r: Request<pb::AllocIdRequest>,
    ) -> Result<Response<pb::AllocIdResponse>, Status> {
        if let Some(error) = self.gate(r.metadata()) {
            return Ok(Response::new(pb::AllocIdResponse {
                error: Some(error),
                ..Default::default()
            }));
        }
        let count = r.into_inner().count;
        let mut next = self.next_id.lock().unwrap();
        let first = *next + 1;
        *next += u64::from(count);
        Ok(Response::new(pb::AllocIdResponse {
            error: None,
            first,
            count,
        }))
    }

    async fn bootstrap_regions(
        &self,
        _: Request<pb::BootstrapRegionsRequest>,
    ) -> Result<Response<pb::BootstrapResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn bootstrap(
        &self,
        r: Request<pb::BootstrapRequest>,
    ) -> Result<Response<pb::BootstrapResponse>, Status> {
        let error = self.gate(r.metadata()).or_else(|| {
            if self.bootstrapped.swap(true, Ordering::SeqCst) {
                return pb_err(pb::ErrorCode::AlreadyBootstrapped, "bootstrapped already");
            }
            let r = r.into_inner();
            let store = r.store.unwrap_or_default();
            self.stores.lock().unwrap().insert(store.id, store);
            let region = r.region.unwrap_or_default();
            self.regions.lock().unwrap().insert(
                region.id,
                pb::RegionHeartbeatRequest {
                    region: Some(region),
                    ..Default::default()
                },
            );
            None
        });
        Ok(Response::new(pb::BootstrapResponse { error }))
    }

    async fn is_bootstrapped(
        &self,
        r: Request<pb::IsBootstrappedRequest>,
    ) -> Result<Response<pb::IsBootstrappedResponse>, Status> {
        let error = self.gate(r.metadata());
        Ok(Response::new(pb::IsBootstrappedResponse {
            bootstrapped: error.is_none() && self.bootstrapped.load(Ordering::SeqCst),
            error,
            replicas: 0,
        }))
    }

    async fn put_store(
        &self,
        r: Request<pb::PutStoreRequest>,
    ) -> Result<Response<pb::PutStoreResponse>, Status> {
        let error = self.gate(r.metadata()).or_else(|| {
            let store = r.into_inner().store.unwrap_or_default();
            self.stores.lock().unwrap().insert(store.id, store);
            None
        });
        Ok(Response::new(pb::PutStoreResponse { error }))
    }

    async fn get_store(
        &self,
        r: Request<pb::GetStoreRequest>,
    ) -> Result<Response<pb::GetStoreResponse>, Status> {
        if let Some(error) = self.gate(r.metadata()) {
            return Ok(Response::new(pb::GetStoreResponse {
                error: Some(error),
                store: None,
            }));
        }
        let store = self
            .stores
            .lock()
            .unwrap()
            .get(&r.into_inner().store_id)
            .cloned();
        Ok(Response::new(pb::GetStoreResponse {
            error: match store {
                Some(_) => None,
                None => pb_err(pb::ErrorCode::NotFound, "no such store"),
            },
            store,
        }))
    }

    async fn get_all_stores(
        &self,
        r: Request<pb::GetAllStoresRequest>,
    ) -> Result<Response<pb::GetAllStoresResponse>, Status> {
        let error = self.gate(r.metadata());
        let exclude = r.into_inner().exclude_tombstones;
        let stores = self
            .stores
            .lock()
            .unwrap()
            .values()
            .filter(|s| !exclude || s.state != pb::StoreState::Tombstone as i32)
            .cloned()
            .collect();
        Ok(Response::new(pb::GetAllStoresResponse { error, stores }))
    }

    async fn set_store_state(
        &self,
        r: Request<pb::SetStoreStateRequest>,
    ) -> Result<Response<pb::SetStoreStateResponse>, Status> {
        let error = self.gate(r.metadata()).or_else(|| {
            let r = r.into_inner();
            match self.stores.lock().unwrap().get_mut(&r.store_id) {
                Some(s) => {
                    s.state = r.state;
                    None
                }
                None => pb_err(pb::ErrorCode::NotFound, "no such store"),
            }
        });
        Ok(Response::new(pb::SetStoreStateResponse { error }))
    }

    async fn store_heartbeat(
        &self,
        r: Request<pb::StoreHeartbeatRequest>,
    ) -> Result<Response<pb::StoreHeartbeatResponse>, Status> {
        let error = self.gate(r.metadata()).or_else(|| {
            let known = self
                .stores
                .lock()
                .unwrap()
                .contains_key(&r.into_inner().store_id);
            (!known)
                .then(|| pb_err(pb::ErrorCode::NotFound, "no such store"))
                .flatten()
        });
        Ok(Response::new(pb::StoreHeartbeatResponse { error }))
    }

    async fn region_heartbeat(
        &self,
        r: Request<pb::RegionHeartbeatRequest>,
    ) -> Result<Response<pb::RegionHeartbeatResponse>, Status> {
        let error = self.gate(r.metadata()).or_else(|| {
            let r = r.into_inner();
            let region = r.region.clone().unwrap_or_default();
            let mut regions = self.regions.lock().unwrap();
            let stored = regions
                .get(&region.id)
                .and_then(|h| h.region.as_ref())
                .and_then(|r| r.epoch);
            let epoch = region.epoch.unwrap_or_default();
            match stored {
                Some(s) if (epoch.version, epoch.conf_ver) < (s.version, s.conf_ver) => {
                    pb_err(pb::ErrorCode::StaleEpoch, "epoch older than PD's")
                }
                _ => {
                    regions.insert(region.id, r);
                    None
                }
            }
        });
        Ok(Response::new(pb::RegionHeartbeatResponse {
            error,
            operator: None,
        }))
    }

    async fn get_region(
        &self,
        r: Request<pb::GetRegionRequest>,
    ) -> Result<Response<pb::GetRegionResponse>, Status> {
        if let Some(error) = self.gate(r.metadata()) {
            return Ok(Response::new(pb::GetRegionResponse {
                error: Some(error),
                ..Default::default()
            }));
        }
        let key = r.into_inner().key;
        let regions = self.regions.lock().unwrap();
        let found = regions.values().find(|h| {
            h.region
                .as_ref()
                .is_some_and(|r| r.start_key <= key && (r.end_key.is_empty() || key < r.end_key))
        });
        Ok(Response::new(self.region_response(found)))
    }

    async fn get_region_by_id(
        &self,
        r: Request<pb::GetRegionByIdRequest>,
    ) -> Result<Response<pb::GetRegionResponse>, Status> {
        if let Some(error) = self.gate(r.metadata()) {
            return Ok(Response::new(pb::GetRegionResponse {
                error: Some(error),
                ..Default::default()
            }));
        }
        let regions = self.regions.lock().unwrap();
        Ok(Response::new(
            self.region_response(regions.get(&r.into_inner().region_id)),
        ))
    }

    async fn scan_regions(
        &self,
        r: Request<pb::ScanRegionsRequest>,
    ) -> Result<Response<pb::ScanRegionsResponse>, Status> {
        let error = self.gate(r.metadata());
        let r = r.into_inner();
        let regions = self.regions.lock().unwrap();
        let mut out: Vec<_> = regions
            .values()
            .filter(|h| {
                h.region.as_ref().is_some_and(|g| {
                    (g.end_key.is_empty() || g.end_key > r.start_key)
                        && (r.end_key.is_empty() || g.start_key < r.end_key)
                })
            })
            .map(|h| self.region_response(Some(h)))
            .collect();
        out.sort_by(|a, b| {
            let key = |x: &pb::GetRegionResponse| x.region.as_ref().unwrap().start_key.clone();
            key(a).cmp(&key(b))
        });
        if r.limit > 0 {
            out.truncate(r.limit as usize);
        }
        let mut next_start_key = Vec::new();
        if self.scan_page > 0 && out.len() > self.scan_page {
            let rest = out.split_off(self.scan_page);
            next_start_key = rest[0].region.as_ref().unwrap().start_key.clone();
        }
        Ok(Response::new(pb::ScanRegionsResponse {
            error,
            regions: out,
            next_start_key,
        }))
    }

    async fn get_members(
        &self,
        r: Request<pb::GetMembersRequest>,
    ) -> Result<Response<pb::GetMembersResponse>, Status> {
        let error = self.gate(r.metadata());
        Ok(Response::new(pb::GetMembersResponse {
            error,
            members: self.members.clone(),
            leader: self.members.iter().find(|m| m.id == self.id).cloned(),
            node_id: self.id,
            ..Default::default()
        }))
    }

    async fn change_members(
        &self,
        r: Request<pb::ChangeMembersRequest>,
    ) -> Result<Response<pb::ChangeMembersResponse>, Status> {
        let error = self.gate(r.metadata());
        Ok(Response::new(pb::ChangeMembersResponse {
            error,
            members: self.members.clone(),
            index: 0,
        }))
    }

    async fn get_operators(
        &self,
        r: Request<pb::GetOperatorsRequest>,
    ) -> Result<Response<pb::GetOperatorsResponse>, Status> {
        let error = self.gate(r.metadata());
        Ok(Response::new(pb::GetOperatorsResponse {
            error,
            operators: Vec::new(),
        }))
    }

    async fn get_cluster_id(
        &self,
        r: Request<pb::GetClusterIdRequest>,
    ) -> Result<Response<pb::GetClusterIdResponse>, Status> {
        let error = self.gate(r.metadata());
        Ok(Response::new(pb::GetClusterIdResponse {
            cluster_id: if error.is_none() { self.cluster_id } else { 0 },
            error,
        }))
    }
}

/// Serves `fake` on a fresh 127.0.0.1 port; returns its address.
pub(crate) async fn serve(fake: Arc<Fake>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PdServer::new(FakePd(fake)))
            .serve_with_incoming(incoming),
    );
    addr
}
