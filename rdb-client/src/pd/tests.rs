//! [`PdClient`] against in-process fake PD nodes that speak the real proto: leader hints,
//! retries, the deadline, typed errors and timestamp batching.

use std::collections::{BTreeMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdb_proto::pd as pb;
use rdb_proto::pd::pd_server::{Pd, PdServer};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::*;

/// A PD node with just enough state for the client's calls (also the PD of
/// `crate::routing` tests).
#[derive(Default)]
pub(crate) struct Fake {
    id: u64,
    /// `Some(hint)`: answer everything NOT_LEADER, with the hint's client address if non-empty.
    not_leader: Option<String>,
    /// Answer this many calls UNAVAILABLE first.
    unavailable_for: AtomicU32,
    /// Answer this many calls INDETERMINATE first.
    indeterminate_for: AtomicU32,
    /// Answer every call UNAVAILABLE.
    always_unavailable: bool,
    /// Every call seen (answered with an error or not).
    calls: AtomicU32,
    /// Tso requests answered with timestamps.
    tso_requests: AtomicU32,
    /// Give at most this many timestamps per request (`None`: as many as asked; PD may give
    /// fewer, and a count of 0 is a malformed answer).
    tso_max: Option<u32>,
    /// Tso requests never answer while this is set.
    tso_hold: AtomicBool,
    /// The next timestamp (physical, logical).
    clock: Mutex<(u64, u64)>,
    next_id: Mutex<u64>,
    bootstrapped: AtomicBool,
    stores: Mutex<BTreeMap<u64, pb::Store>>,
    regions: Mutex<BTreeMap<u64, pb::RegionHeartbeatRequest>>,
    members: Vec<pb::Member>,
    /// This PD's cluster id; a request stamped with another is refused CLUSTER_MISMATCH.
    cluster_id: u64,
    /// The cluster id stamped on the last request (0: none).
    last_stamp: AtomicU64,
    /// Answer scans in pages of this many regions (0: one page).
    scan_page: usize,
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

fn opts() -> Options {
    Options {
        deadline: Duration::from_secs(5),
        attempt_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_millis(300),
        election_timeout: Duration::from_secs(1),
        backoff_min: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
        tls: None,
        spread_reads: true,
    }
}

fn with_deadline(deadline: Duration) -> Options {
    Options { deadline, ..opts() }
}

/// A 127.0.0.1 port nobody listens on (bound, then released).
pub(crate) fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    addr
}

fn leader_fake() -> Arc<Fake> {
    Arc::new(Fake {
        id: 1,
        clock: Mutex::new((1_700_000_000_000, 0)),
        ..Fake::default()
    })
}

#[test]
fn store_labels_parse_or_say_which_part_is_wrong() {
    assert_eq!(
        parse_labels("zone=a, host=h1").unwrap(),
        vec![("zone".into(), "a".into()), ("host".into(), "h1".into())]
    );
    assert_eq!(parse_labels("").unwrap(), Vec::new());
    assert!(parse_labels("zone").unwrap_err().contains("KEY=VALUE"));
    assert!(parse_labels("zone=a,zone=b").unwrap_err().contains("twice"));
    assert!(parse_labels("zone=a b").unwrap_err().contains("letters"));
    assert!(parse_labels("=a").is_err());
}

#[test]
fn timestamp_u64_form_and_order() {
    let ts = Timestamp {
        physical: 1_700_000_000_123,
        logical: 7,
    };
    assert_eq!(ts.as_u64(), (1_700_000_000_123 << 16) | 7);
    assert_eq!(Timestamp::from_u64(ts.as_u64()), ts);
    let later_logical = Timestamp { logical: 8, ..ts };
    let later_physical = Timestamp {
        physical: ts.physical + 1,
        logical: 0,
    };
    assert!(ts < later_logical && later_logical < later_physical);
    assert!(ts.as_u64() < later_logical.as_u64());
    assert!(later_logical.as_u64() < later_physical.as_u64());
}

#[tokio::test]
async fn not_leader_with_a_hint_is_followed_and_the_leader_cached() {
    let leader = leader_fake();
    let leader_addr = serve(leader.clone()).await;
    let follower = Arc::new(Fake {
        not_leader: Some(leader_addr.clone()),
        ..Fake::default()
    });
    let follower_addr = serve(follower.clone()).await;
    let pd = PdClient::with_options([follower_addr.clone()], opts()).unwrap();

    let first = pd.alloc_ids(10).await.unwrap();
    assert_eq!(first, 1);
    assert_eq!(pd.leader().as_deref(), Some(leader_addr.as_str()));
    assert!(pd.endpoints().contains(&leader_addr), "the hint was added");
    assert_eq!(follower.calls.load(Ordering::SeqCst), 1);

    // The next call goes to the cached leader directly.
    assert_eq!(pd.alloc_ids(1).await.unwrap(), 11);
    assert_eq!(follower.calls.load(Ordering::SeqCst), 1);
    assert_eq!(leader.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn not_leader_without_a_hint_tries_the_next_endpoint() {
    let leader = leader_fake();
    let leader_addr = serve(leader.clone()).await;
    let follower = Arc::new(Fake {
        not_leader: Some(String::new()),
        ..Fake::default()
    });
    let follower_addr = serve(follower.clone()).await;
    let pd = PdClient::with_options([follower_addr, leader_addr.clone()], opts()).unwrap();
    for _ in 0..3 {
        assert!(!pd.is_bootstrapped().await.unwrap());
    }
    assert_eq!(pd.leader().as_deref(), Some(leader_addr.as_str()));
    assert!(follower.calls.load(Ordering::SeqCst) <= 1);
}

#[tokio::test]
async fn unavailable_and_indeterminate_are_retried_until_success() {
    let fake = Arc::new(Fake {
        unavailable_for: AtomicU32::new(3),
        indeterminate_for: AtomicU32::new(2),
        ..Fake::default()
    });
    let pd = PdClient::with_options([serve(fake.clone()).await], opts()).unwrap();
    pd.put_store(
        Store {
            id: 4,
            address: "127.0.0.1:2379".into(),
            ..Default::default()
        },
        7,
    )
    .await
    .unwrap();
    assert_eq!(
        fake.calls.load(Ordering::SeqCst),
        6,
        "3 + 2 refusals, then success"
    );
    let store = pd.get_store(4).await.unwrap().unwrap();
    assert_eq!(store.address, "127.0.0.1:2379");
    assert_eq!(store.state, StoreState::Up);
}

#[tokio::test]
async fn a_transport_failure_moves_on_to_the_next_endpoint() {
    let fake = leader_fake();
    let live = serve(fake.clone()).await;
    let pd = PdClient::with_options([dead_addr(), live.clone()], opts()).unwrap();
    let (first, n) = pd.timestamps(5).await.unwrap();
    assert_eq!(n, 5);
    assert_eq!(first.physical, 1_700_000_000_000);
    assert_eq!(pd.leader().as_deref(), Some(live.as_str()));
}

#[tokio::test]
async fn the_deadline_ends_retries_with_an_error_that_says_so() {
    let fake = Arc::new(Fake {
        always_unavailable: true,
        ..Fake::default()
    });
    let pd = PdClient::with_options(
        [serve(fake.clone()).await],
        with_deadline(Duration::from_millis(300)),
    )
    .unwrap();
    let started = Instant::now();
    match pd.get_members().await {
        Err(Error::Unavailable(m)) => assert!(m.contains("deadline"), "{m}"),
        other => panic!("expected unavailable at the deadline: {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(fake.calls.load(Ordering::SeqCst) > 1, "it was retried");

    // Nobody listening: unavailable, and a write that was never sent is not indeterminate.
    let pd =
        PdClient::with_options([dead_addr()], with_deadline(Duration::from_millis(300))).unwrap();
    match pd.set_store_tombstone(3).await {
        Err(Error::Unavailable(m)) => assert!(m.contains("deadline"), "{m}"),
        other => panic!("expected unavailable at the deadline: {other:?}"),
    }
    // A timestamp waiter gets its batch's error at the deadline, with the cause.
    match pd.timestamp().await {
        Err(Error::Unavailable(m)) => {
            assert!(m.contains("deadline") && m.contains("no PD leader"), "{m}")
        }
        other => panic!("expected unavailable at the deadline: {other:?}"),
    }
}

#[tokio::test]
async fn a_write_still_indeterminate_at_the_deadline_is_reported_so() {
    let fake = Arc::new(Fake {
        indeterminate_for: AtomicU32::new(u32::MAX),
        ..Fake::default()
    });
    let pd = PdClient::with_options(
        [serve(fake).await],
        with_deadline(Duration::from_millis(200)),
    )
    .unwrap();
    match pd.bootstrap(Store::default(), Region::default(), 7).await {
        Err(Error::Indeterminate(m)) => assert!(m.contains("deadline"), "{m}"),
        other => panic!("expected indeterminate: {other:?}"),
    }
}

#[tokio::test]
async fn refusals_are_typed_and_lookups_of_missing_things_are_none() {
    let fake = leader_fake();
    let pd = PdClient::with_options([serve(fake).await], opts()).unwrap();
    assert!(!pd.is_bootstrapped().await.unwrap());
    assert_eq!(pd.get_region(b"k".to_vec()).await.unwrap(), None);

    let store = Store {
        id: 1,
        address: "127.0.0.1:2379".into(),
        ..Default::default()
    };
    let region = Region {
        id: 2,
        epoch: RegionEpoch {
            version: 5,
            conf_ver: 1,
        },
        peers: vec![Peer {
            id: 3,
            store_id: 1,
            learner: false,
        }],
        ..Default::default()
    };
    pd.bootstrap(store.clone(), region.clone(), 7)
        .await
        .unwrap();
    assert!(pd.is_bootstrapped().await.unwrap());
    assert!(matches!(
        pd.bootstrap(store, region.clone(), 7).await,
        Err(Error::AlreadyBootstrapped(_))
    ));

    let got = pd.get_region("any key").await.unwrap().unwrap();
    assert_eq!(got.region, region);
    assert_eq!(
        pd.get_region_by_id(2).await.unwrap().unwrap().region,
        region
    );
    assert_eq!(pd.get_region_by_id(9).await.unwrap(), None);
    assert_eq!(pd.get_store(9).await.unwrap(), None);
    assert!(matches!(
        pd.set_store_tombstone(9).await,
        Err(Error::NotFound(_))
    ));

    let older = Region {
        epoch: RegionEpoch {
            version: 4,
            conf_ver: 1,
        },
        ..region.clone()
    };
    let leader = Peer {
        id: 3,
        store_id: 1,
        learner: false,
    };
    assert!(matches!(
        pd.region_heartbeat(older, leader, 0, 0).await,
        Err(Error::StaleEpoch(_))
    ));
    let newer = Region {
        epoch: RegionEpoch {
            version: 6,
            conf_ver: 1,
        },
        ..region
    };
    pd.region_heartbeat(newer.clone(), leader, 1 << 20, 1000)
        .await
        .unwrap();
    let scanned = pd.scan_regions("", "", 0).await.unwrap();
    assert_eq!(scanned.len(), 1);
    assert_eq!(scanned[0].region, newer);
    assert_eq!(scanned[0].leader, Some(leader));
    assert_eq!(scanned[0].approximate_keys, 1000);

    pd.store_heartbeat(StoreStats {
        store_id: 1,
        region_count: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    pd.set_store_tombstone(1).await.unwrap();
    assert_eq!(pd.get_all_stores(true).await.unwrap(), vec![]);
    let all = pd.get_all_stores(false).await.unwrap();
    assert_eq!(all[0].state, StoreState::Tombstone);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_timestamps_are_distinct_increasing_and_batched() {
    const TASKS: usize = 64;
    const CALLS: usize = 100;
    let fake = leader_fake();
    let pd = PdClient::with_options([serve(fake.clone()).await], opts()).unwrap();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let pd = pd.clone();
            tokio::spawn(async move {
                let mut got = Vec::with_capacity(CALLS);
                for _ in 0..CALLS {
                    got.push(pd.timestamp().await.unwrap().as_u64());
                }
                got
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for t in tasks {
        let got = t.await.unwrap();
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "one caller's timestamps increase"
        );
        seen.extend(got);
    }
    assert_eq!(seen.len(), TASKS * CALLS, "every timestamp is distinct");
    let requests = fake.tso_requests.load(Ordering::SeqCst) as usize;
    assert!(
        requests < TASKS * CALLS,
        "{requests} requests for {} timestamps",
        TASKS * CALLS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_left_over_when_pd_gives_fewer_timestamps_wait_for_the_next_request() {
    let fake = Arc::new(Fake {
        tso_max: Some(3),
        ..Fake::default()
    });
    let pd = PdClient::with_options([serve(fake.clone()).await], opts()).unwrap();
    let calls: Vec<_> = (0..32)
        .map(|_| {
            let pd = pd.clone();
            tokio::spawn(async move { pd.timestamp().await.unwrap() })
        })
        .collect();
    let mut seen = HashSet::new();
    for c in calls {
        seen.insert(c.await.unwrap());
    }
    assert_eq!(seen.len(), 32);
    assert!(
        fake.tso_requests.load(Ordering::SeqCst) >= 11,
        "3 per request at most"
    );
}

/// Waits until `cond` holds; panics naming `what` after 5 s.
async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "not within 5 s: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn a_batch_driver_lost_with_its_runtime_does_not_block_later_callers() {
    let server = tokio::runtime::Runtime::new().unwrap();
    let fake = leader_fake();
    fake.tso_hold.store(true, Ordering::SeqCst);
    let addr = server.block_on(serve(fake.clone()));
    // tonic runs a channel's worker on the runtime that made it: this one outlives the test.
    let pd = {
        let _in_server = server.enter();
        PdClient::with_options([addr], opts()).unwrap()
    };

    // The driver's request hangs, then its runtime goes away under it.
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    first.block_on(async {
        let waiter = tokio::spawn({
            let pd = pd.clone();
            async move { pd.timestamp().await }
        });
        wait_for("the fake saw the Tso request", || {
            fake.calls.load(Ordering::SeqCst) >= 1
        })
        .await;
        drop(waiter);
    });
    drop(first);

    fake.tso_hold.store(false, Ordering::SeqCst);
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ts = second.block_on(pd.timestamp()).unwrap();
    assert_eq!(ts.physical, 1_700_000_000_000);
}

#[tokio::test]
async fn a_tso_answer_without_timestamps_is_an_error_not_a_timestamp() {
    let fake = Arc::new(Fake {
        tso_max: Some(0),
        ..Fake::default()
    });
    let pd = PdClient::with_options([serve(fake).await], opts()).unwrap();
    match pd.timestamp().await {
        Err(Error::Unavailable(m)) => assert!(m.contains("malformed"), "{m}"),
        other => panic!("expected an error: {other:?}"),
    }
}

#[tokio::test]
async fn members_and_their_leader() {
    let member = |id: u64| pb::Member {
        id,
        client_addr: format!("10.0.0.{id}:2379"),
        peer_addr: format!("10.0.0.{id}:2380"),
        ..Default::default()
    };
    let fake = Arc::new(Fake {
        id: 2,
        members: vec![member(1), member(2), member(3)],
        ..Fake::default()
    });
    let pd = PdClient::with_options([serve(fake).await], opts()).unwrap();
    let m = pd.get_members().await.unwrap();
    assert_eq!(m.members.len(), 3);
    assert_eq!(m.leader.unwrap().client_addr, "10.0.0.2:2379");
    // The members' addresses are endpoints from now on (a PD node added since the client
    // was made is tried too).
    let known = pd.endpoints();
    for id in 1..=3 {
        assert!(known.contains(&format!("10.0.0.{id}:2379")), "{known:?}");
    }
}

#[tokio::test]
async fn bad_counts_are_refused_before_sending() {
    let pd = PdClient::with_options([dead_addr()], opts()).unwrap();
    assert!(matches!(
        pd.timestamps(0).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        pd.timestamps(MAX_TSO_BATCH + 1).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        pd.alloc_ids(0).await,
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn a_silent_pd_leader_costs_a_turn_not_the_attempt_timeout() {
    // The first endpoint takes requests and never answers them, as a paused leader does.
    let silent = leader_fake();
    silent.tso_hold.store(true, Ordering::SeqCst);
    let live = leader_fake();
    let endpoints = [serve(silent.clone()).await, serve(live.clone()).await];
    let timing = Options {
        deadline: Duration::from_secs(3),
        attempt_timeout: Duration::from_secs(2),
        election_timeout: Duration::from_millis(300),
        ..opts()
    };
    let pd = PdClient::with_options(endpoints.clone(), timing).unwrap();
    let started = Instant::now();
    let ts = pd.timestamp().await.unwrap();
    let took = started.elapsed();
    assert_eq!(ts.physical, 1_700_000_000_000);
    // A 300 ms turn, then the other node; a full attempt would be 2 s.
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(silent.calls.load(Ordering::SeqCst), 1);
    assert_eq!(pd.leader().as_deref(), Some(endpoints[1].as_str()));
}

#[tokio::test]
async fn a_client_that_expects_a_cluster_stamps_every_call_and_another_cluster_is_final() {
    let fake = Arc::new(Fake {
        cluster_id: 41,
        clock: Mutex::new((1_700_000_000_000, 0)),
        ..Fake::default()
    });
    let pd = PdClient::with_options([serve(fake.clone()).await], opts()).unwrap();
    // Unstamped until told.
    assert_eq!(pd.cluster_id().await.unwrap(), 41);
    assert_eq!(fake.last_stamp.load(Ordering::SeqCst), 0);
    pd.set_cluster_id(41);
    assert_eq!(pd.expected_cluster_id(), 41);
    pd.alloc_ids(1).await.unwrap();
    assert_eq!(fake.last_stamp.load(Ordering::SeqCst), 41);
    // Clones share it, the timestamp batch included.
    pd.clone().timestamp().await.unwrap();
    assert_eq!(fake.last_stamp.load(Ordering::SeqCst), 41);

    pd.set_cluster_id(42);
    let before = fake.calls.load(Ordering::SeqCst);
    match pd.alloc_ids(1).await {
        Err(Error::ClusterMismatch(m)) => {
            assert!(m.contains("41") && m.contains("42"), "{m}")
        }
        other => panic!("expected a cluster mismatch: {other:?}"),
    }
    assert_eq!(
        fake.calls.load(Ordering::SeqCst),
        before + 1,
        "a mismatch is not retried"
    );
    assert!(matches!(
        pd.timestamp().await,
        Err(Error::ClusterMismatch(_))
    ));
}

#[tokio::test]
async fn a_region_scan_answered_in_pages_returns_every_region_once_in_order() {
    let fake = Arc::new(Fake {
        scan_page: 3,
        ..Fake::default()
    });
    let pd = PdClient::with_options([serve(fake.clone()).await], opts()).unwrap();
    let leader = Peer {
        id: 100,
        store_id: 1,
        learner: false,
    };
    let bounds: Vec<Vec<u8>> = (0..10u8).map(|i| vec![b'a' + i]).collect();
    for i in 0..=bounds.len() {
        let region = Region {
            id: i as u64 + 1,
            start_key: if i == 0 {
                vec![]
            } else {
                bounds[i - 1].clone()
            },
            end_key: bounds.get(i).cloned().unwrap_or_default(),
            peers: vec![leader],
            ..Default::default()
        };
        pd.region_heartbeat(region, leader, 0, 0).await.unwrap();
    }
    let ids = |rs: Vec<RegionInfo>| rs.into_iter().map(|r| r.region.id).collect::<Vec<_>>();
    let before = fake.calls.load(Ordering::SeqCst);
    let all = pd.scan_regions("", "", 0).await.unwrap();
    assert_eq!(ids(all), (1..=11).collect::<Vec<_>>());
    assert_eq!(
        fake.calls.load(Ordering::SeqCst) - before,
        4,
        "11 regions in pages of 3"
    );
    // A limit and a range still hold across pages.
    assert_eq!(
        ids(pd.scan_regions("b", "", 5).await.unwrap()),
        vec![3, 4, 5, 6, 7]
    );
    assert_eq!(
        ids(pd.scan_regions("b", "h", 0).await.unwrap()),
        vec![3, 4, 5, 6, 7, 8]
    );
}

#[test]
fn a_change_of_pd_members_is_in_effect_only_as_asked() {
    use crate::MemberChange as C;
    let member = |id: u64, learner: bool| Member {
        id,
        client_addr: format!("10.0.0.{id}:2399"),
        peer_addr: format!("10.0.0.{id}:2400"),
        learner,
        match_index: 0,
    };
    let m = Members {
        members: vec![member(1, false), member(4, true)],
        removed: vec![3],
        ..Members::default()
    };
    let add = |id: u64, host: &str, learner: bool| {
        let (peer_addr, client_addr) = (format!("{host}:2400"), format!("{host}:2399"));
        if learner {
            C::AddLearner {
                id,
                peer_addr,
                client_addr,
            }
        } else {
            C::AddVoter {
                id,
                peer_addr,
                client_addr,
            }
        }
    };
    // The same node at the same addresses: in effect (a retried add succeeds).
    assert!(m.hold(&add(1, "10.0.0.1", false)));
    assert!(m.hold(&add(4, "10.0.0.4", true)));
    // Another node under a member's id, or a learner asked to vote: not in effect.
    assert!(!m.hold(&add(1, "10.0.0.9", false)));
    assert!(!m.hold(&add(4, "10.0.0.4", false)));
    assert!(!m.hold(&C::Promote(4)));
    assert!(m.hold(&C::Promote(1)));
    // Removed: only an id the group removed, not one it never had.
    assert!(m.hold(&C::Remove(3)));
    assert!(!m.hold(&C::Remove(7)));
    assert!(!m.hold(&C::Remove(1)));
}
