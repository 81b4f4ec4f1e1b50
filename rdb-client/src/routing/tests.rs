//! PD mode against in-process fakes: a fake PD (`crate::pd::tests`) holds the region map, and
//! fake stores check each request's region context the way a store does (region, epoch, keys,
//! leadership) and record what they were sent.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdb_proto::kv::kv_server::{Kv, KvServer};
use rdb_proto::kv::{
    BatchDeleteRequest, BatchDeleteResponse, BatchGetRequest, BatchGetResponse, BatchPutRequest,
    BatchPutResponse, CasRequest, CasResponse, CheckRequest, CheckResponse, DeleteRequest,
    DeleteResponse, Error as PbError, ErrorCode, GetRequest, GetResponse, GetResult, HashRequest,
    HashResponse, KeyValue, LeaderHint, PutRequest, PutResponse, RegionContext, RequestId,
    ScanRequest, ScanResponse, StatusRequest, StatusResponse,
};
use tonic::{Request, Response, Status};

use crate::pd::{Peer, Region, RegionEpoch, Store};
use crate::route::region_context;
use crate::routing::Routing;
use crate::{prefix_end, Client, Error, Options, PdClient, ReadConsistency, ScanRange};

/// One request a fake store received.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    op: &'static str,
    keys: Vec<Vec<u8>>,
    context: Option<RegionContext>,
    request_id: Option<RequestId>,
}

/// A store: the regions it hosts as it knows them, and its part of the data.
#[derive(Default)]
struct FakeStore {
    /// Regions hosted, by id.
    regions: Mutex<BTreeMap<u64, Region>>,
    /// What EPOCH_NOT_MATCH sends back (empty: the hosted region itself).
    current: Mutex<Vec<Region>>,
    /// Regions this store does not lead: the hint it answers with.
    not_leader: Mutex<HashMap<u64, LeaderHint>>,
    /// Answer the next requests with these codes first, whatever they are.
    fail_first: Mutex<VecDeque<ErrorCode>>,
    /// Never answer a put (after recording it).
    hang_puts: bool,
    /// Answer puts only after this long (a slow store).
    put_delay: Duration,
    data: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
    seen: Mutex<Vec<Seen>>,
}

fn err(code: ErrorCode, regions: Vec<Region>) -> Option<PbError> {
    Some(PbError {
        code: code as i32,
        message: format!("{code:?}"),
        leader: None,
        regions: regions.into_iter().map(Into::into).collect(),
    })
}

impl FakeStore {
    fn seen(&self, op: &str) -> Vec<Seen> {
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|s| s.op == op).cloned().collect()
    }

    /// Records the request and checks it as a store does; the region it is for (`None` when
    /// the store hosts no region: serve everything, like a static node) or the error to answer.
    fn check(
        &self,
        op: &'static str,
        keys: &[&[u8]],
        context: Option<RegionContext>,
        request_id: Option<RequestId>,
    ) -> Result<Option<Region>, Option<PbError>> {
        self.seen.lock().unwrap().push(Seen {
            op,
            keys: keys.iter().map(|k| k.to_vec()).collect(),
            context,
            request_id,
        });
        if let Some(code) = self.fail_first.lock().unwrap().pop_front() {
            return Err(err(code, Vec::new()));
        }
        let regions = self.regions.lock().unwrap();
        if regions.is_empty() {
            return Ok(None);
        }
        let holds = |r: &Region, k: &[u8]| {
            r.start_key.as_slice() <= k && (r.end_key.is_empty() || k < r.end_key.as_slice())
        };
        let region = match context.filter(|c| c.region_id != 0) {
            Some(ctx) => {
                let Some(r) = regions.get(&ctx.region_id) else {
                    return Err(err(ErrorCode::RegionNotFound, Vec::new()));
                };
                if ctx.epoch != region_context(r).epoch {
                    let current = self.current.lock().unwrap().clone();
                    let current = if current.is_empty() {
                        vec![r.clone()]
                    } else {
                        current
                    };
                    return Err(err(ErrorCode::EpochNotMatch, current));
                }
                r.clone()
            }
            None => match regions.values().find(|r| holds(r, keys[0])) {
                Some(r) => r.clone(),
                None => return Err(err(ErrorCode::RegionNotFound, Vec::new())),
            },
        };
        if let Some(hint) = self.not_leader.lock().unwrap().get(&region.id) {
            return Err(Some(PbError {
                code: ErrorCode::NotLeader as i32,
                message: "not leader".into(),
                leader: Some(hint.clone()),
                regions: Vec::new(),
            }));
        }
        if !keys.iter().all(|k| holds(&region, k)) {
            return Err(err(ErrorCode::KeyNotInRegion, vec![region]));
        }
        Ok(Some(region))
    }
}

struct FakeKv(Arc<FakeStore>);

#[tonic::async_trait]
impl Kv for FakeKv {
    async fn put(&self, r: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let r = r.into_inner();
        let error = self
            .0
            .check("put", &[&r.key], r.context, r.request_id)
            .err();
        if self.0.hang_puts {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(self.0.put_delay).await;
        if error.is_none() {
            self.0.data.lock().unwrap().insert(r.key, r.value);
        }
        Ok(Response::new(PutResponse {
            revision: 0,
            error: error.flatten(),
        }))
    }

    async fn get(&self, r: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let r = r.into_inner();
        let value = self.0.data.lock().unwrap().get(&r.key).cloned();
        let mut resp = GetResponse::default();
        match self.0.check("get", &[&r.key], r.context, None) {
            Err(e) => resp.error = e,
            Ok(_) => {
                resp.found = value.is_some();
                resp.value = value.unwrap_or_default();
            }
        }
        Ok(Response::new(resp))
    }

    async fn delete(&self, r: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let r = r.into_inner();
        let error = self.0.check("delete", &[&r.key], r.context, r.request_id);
        let existed = error.is_ok() && self.0.data.lock().unwrap().remove(&r.key).is_some();
        Ok(Response::new(DeleteResponse {
            error: error.err().flatten(),
            existed,
            ..Default::default()
        }))
    }

    async fn scan(&self, r: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
        let r = r.into_inner();
        let (start, end) = if r.prefix.is_empty() {
            (r.start, r.end)
        } else {
            (r.prefix.clone(), prefix_end(&r.prefix))
        };
        let region = match self.0.check("scan", &[&start], r.context, None) {
            Ok(region) => region.unwrap_or_default(),
            Err(error) => {
                return Ok(Response::new(ScanResponse {
                    revision: 0,
                    error,
                    ..Default::default()
                }))
            }
        };
        // Only the region's part of the range; say where the next region starts.
        let cut = !region.end_key.is_empty() && (end.is_empty() || region.end_key < end);
        let end = if cut { region.end_key.clone() } else { end };
        let data = self.0.data.lock().unwrap();
        let kvs = data
            .range(start..)
            .take_while(|(k, _)| end.is_empty() || **k < end)
            .map(|(k, v)| KeyValue {
                key: k.clone(),
                value: v.clone(),
                meta: None,
            })
            .collect();
        Ok(Response::new(ScanResponse {
            revision: 0,
            error: None,
            kvs,
            more: cut,
            next_start: if cut { end } else { Vec::new() },
        }))
    }

    async fn cas(&self, _: Request<CasRequest>) -> Result<Response<CasResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn check(&self, _: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn transfer_leader(
        &self,
        _: Request<rdb_proto::kv::TransferLeaderRequest>,
    ) -> Result<Response<rdb_proto::kv::TransferLeaderResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn merge_region(
        &self,
        _: Request<rdb_proto::kv::MergeRegionRequest>,
    ) -> Result<Response<rdb_proto::kv::MergeRegionResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn compact(
        &self,
        _: Request<rdb_proto::kv::CompactRequest>,
    ) -> Result<Response<rdb_proto::kv::CompactResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn member_list(
        &self,
        _: Request<rdb_proto::kv::MemberListRequest>,
    ) -> Result<Response<rdb_proto::kv::MemberListResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn member_change(
        &self,
        _: Request<rdb_proto::kv::MemberChangeRequest>,
    ) -> Result<Response<rdb_proto::kv::MemberChangeResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn batch_put(
        &self,
        r: Request<BatchPutRequest>,
    ) -> Result<Response<BatchPutResponse>, Status> {
        let r = r.into_inner();
        let keys: Vec<&[u8]> = r.pairs.iter().map(|kv| kv.key.as_slice()).collect();
        let error = self
            .0
            .check("batch_put", &keys, r.context, r.request_id)
            .err();
        if error.is_none() {
            let mut data = self.0.data.lock().unwrap();
            data.extend(r.pairs.into_iter().map(|kv| (kv.key, kv.value)));
        }
        Ok(Response::new(BatchPutResponse {
            revision: 0,
            error: error.flatten(),
        }))
    }

    async fn batch_get(
        &self,
        r: Request<BatchGetRequest>,
    ) -> Result<Response<BatchGetResponse>, Status> {
        let r = r.into_inner();
        let keys: Vec<&[u8]> = r.keys.iter().map(Vec::as_slice).collect();
        if let Err(error) = self.0.check("batch_get", &keys, r.context, None) {
            return Ok(Response::new(BatchGetResponse {
                error,
                results: Vec::new(),
            }));
        }
        let data = self.0.data.lock().unwrap();
        let results = r
            .keys
            .iter()
            .map(|k| GetResult {
                found: data.contains_key(k),
                value: data.get(k).cloned().unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(BatchGetResponse {
            error: None,
            results,
        }))
    }

    async fn batch_delete(
        &self,
        r: Request<BatchDeleteRequest>,
    ) -> Result<Response<BatchDeleteResponse>, Status> {
        let r = r.into_inner();
        let keys: Vec<&[u8]> = r.keys.iter().map(Vec::as_slice).collect();
        if let Err(error) = self.0.check("batch_delete", &keys, r.context, r.request_id) {
            return Ok(Response::new(BatchDeleteResponse {
                revision: 0,
                error,
                deleted: 0,
            }));
        }
        let mut data = self.0.data.lock().unwrap();
        let deleted = r.keys.iter().filter(|k| data.remove(*k).is_some()).count();
        Ok(Response::new(BatchDeleteResponse {
            revision: 0,
            error: None,
            deleted: deleted as u64,
        }))
    }
}

/// Serves a fake store on a fresh 127.0.0.1 port; returns it and its address.
async fn serve_store() -> (Arc<FakeStore>, String) {
    serve(FakeStore::default()).await
}

async fn serve(store: FakeStore) -> (Arc<FakeStore>, String) {
    let store = Arc::new(store);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(KvServer::new(FakeKv(store.clone())))
            .serve_with_incoming(incoming),
    );
    (store, addr)
}

fn opts() -> Options {
    Options {
        deadline: Duration::from_secs(3),
        attempt_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_millis(300),
        election_timeout: Duration::from_secs(1),
        backoff_min: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
        tls: None,
        spread_reads: true,
    }
}

fn region(id: u64, start: &str, end: &str, version: u64, peers: &[Peer]) -> Region {
    Region {
        id,
        start_key: start.into(),
        end_key: end.into(),
        epoch: RegionEpoch {
            version,
            conf_ver: 1,
        },
        peers: peers.to_vec(),
    }
}

fn peer(id: u64, store_id: u64) -> Peer {
    Peer {
        id,
        store_id,
        learner: false,
    }
}

/// A fake PD holding `stores` (id, address) and `regions` (each with its leader); returns a
/// PD-mode client of it.
async fn client_with_pd(stores: &[(u64, &str)], regions: &[(Region, Peer)]) -> Client {
    let pd_addr = crate::pd::tests::serve(Arc::default()).await;
    let pd = PdClient::with_options([pd_addr.clone()], opts()).unwrap();
    for &(id, address) in stores {
        let store = Store {
            id,
            address: address.into(),
            ..Store::default()
        };
        pd.put_store(store, id).await.unwrap();
    }
    for (r, leader) in regions {
        pd.region_heartbeat(r.clone(), *leader, 0, 0).await.unwrap();
    }
    Client::with_pd([pd_addr], opts()).unwrap()
}

fn ctx(r: &Region) -> Option<RegionContext> {
    Some(region_context(r))
}

fn keys(ks: &[&str]) -> Vec<Vec<u8>> {
    ks.iter().map(|k| k.as_bytes().to_vec()).collect()
}

/// Two regions split at "m": [.., m) on store 1, [m, ..) on store 2.
async fn two_regions() -> (Client, Arc<FakeStore>, Arc<FakeStore>, Region, Region) {
    let (s1, a1) = serve_store().await;
    let (s2, a2) = serve_store().await;
    let left = region(1, "", "m", 2, &[peer(11, 1)]);
    let right = region(2, "m", "", 2, &[peer(21, 2)]);
    s1.regions.lock().unwrap().insert(1, left.clone());
    s2.regions.lock().unwrap().insert(2, right.clone());
    let client = client_with_pd(
        &[(1, &a1), (2, &a2)],
        &[(left.clone(), peer(11, 1)), (right.clone(), peer(21, 2))],
    )
    .await;
    (client, s1, s2, left, right)
}

#[tokio::test]
async fn keys_go_to_their_regions_store_with_the_regions_context() {
    let (client, s1, s2, left, right) = two_regions().await;
    client.put("apple", "1").await.unwrap();
    client.put("zebra", "2").await.unwrap();
    assert_eq!(client.get("apple").await.unwrap(), Some(b"1".to_vec()));
    let serializable = client.get_with("zebra", ReadConsistency::Serializable);
    assert_eq!(serializable.await.unwrap(), Some(b"2".to_vec()));
    assert!(client.delete("zebra").await.unwrap());

    let puts1 = s1.seen("put");
    assert_eq!(puts1.len(), 1, "{puts1:?}");
    assert_eq!(puts1[0].keys, keys(&["apple"]));
    assert_eq!(puts1[0].context, ctx(&left));
    let puts2 = s2.seen("put");
    assert_eq!(puts2.len(), 1, "{puts2:?}");
    assert_eq!(puts2[0].keys, keys(&["zebra"]));
    assert_eq!(puts2[0].context, ctx(&right));
    assert_eq!(s1.seen("get")[0].context, ctx(&left));
    assert_eq!(s2.seen("get")[0].context, ctx(&right));
    assert_eq!(s2.seen("delete")[0].context, ctx(&right));
    assert!(s1.seen("delete").is_empty() && s2.seen("get").len() == 1);
    assert_eq!(client.region_cache().unwrap().len(), 2);
    assert!(client.endpoints().len() == 2, "{:?}", client.endpoints());
}

#[tokio::test]
async fn epoch_not_match_reroutes_the_same_request_id_to_the_new_region() {
    let (s1, a1) = serve_store().await;
    let (s2, a2) = serve_store().await;
    // PD still has the region before its split; the stores have the two halves.
    let whole = region(1, "", "", 1, &[peer(11, 1)]);
    let left = region(1, "", "m", 2, &[peer(11, 1)]);
    let right = region(3, "m", "", 2, &[peer(31, 2)]);
    s1.regions.lock().unwrap().insert(1, left.clone());
    *s1.current.lock().unwrap() = vec![left.clone(), right.clone()];
    s2.regions.lock().unwrap().insert(3, right.clone());
    let client = client_with_pd(&[(1, &a1), (2, &a2)], &[(whole.clone(), peer(11, 1))]).await;

    client.put("zebra", "z").await.unwrap();

    let first = s1.seen("put");
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].context, ctx(&whole), "sent with PD's stale epoch");
    let retried = s2.seen("put");
    assert_eq!(retried.len(), 1, "{retried:?}");
    assert_eq!(retried[0].context, ctx(&right));
    assert!(first[0].request_id.is_some());
    assert_eq!(
        retried[0].request_id, first[0].request_id,
        "same request id"
    );
    assert_eq!(
        s2.data.lock().unwrap().get(b"zebra".as_slice()).unwrap(),
        b"z"
    );

    // The cache now holds both halves: a key of the left half goes straight there.
    client.put("apple", "a").await.unwrap();
    assert_eq!(s1.seen("put")[1].context, ctx(&left));
}

#[tokio::test]
async fn not_leader_hint_moves_the_request_to_the_hinted_store() {
    let (s1, a1) = serve_store().await;
    let (s2, a2) = serve_store().await;
    let r = region(1, "", "", 1, &[peer(11, 1), peer(12, 2)]);
    s1.regions.lock().unwrap().insert(1, r.clone());
    s2.regions.lock().unwrap().insert(1, r.clone());
    let hint = LeaderHint {
        id: 2,
        addr: a2.clone(),
        peer_id: 12,
    };
    s1.not_leader.lock().unwrap().insert(1, hint);
    // PD names the old leader, and knows only store 1: store 2's address comes from the hint.
    let client = client_with_pd(&[(1, &a1)], &[(r.clone(), peer(11, 1))]).await;

    client.put("k", "v").await.unwrap();
    let (tried, done) = (s1.seen("put"), s2.seen("put"));
    assert_eq!((tried.len(), done.len()), (1, 1), "{tried:?} {done:?}");
    assert_eq!(done[0].request_id, tried[0].request_id, "same request id");
    assert_eq!(done[0].context, ctx(&r));
    let cache = client.region_cache().unwrap();
    assert_eq!(cache.locate(b"k").unwrap().leader, Some(peer(12, 2)));
    assert_eq!(cache.store_address(2), Some(a2));

    // The next call goes straight to the new leader.
    client.put("k2", "v").await.unwrap();
    assert_eq!(s1.seen("put").len(), 1);
    assert_eq!(s2.seen("put").len(), 2);
}

#[tokio::test]
async fn batches_are_cut_by_region_and_answered_in_the_callers_order() {
    let (client, s1, s2, left, right) = two_regions().await;
    let pairs = [("x", "1"), ("a", "2"), ("y", "3"), ("b", "4")];
    client.batch_put(pairs).await.unwrap();
    let (p1, p2) = (s1.seen("batch_put"), s2.seen("batch_put"));
    assert_eq!(p1.len(), 1, "{p1:?}");
    assert_eq!(p2.len(), 1, "{p2:?}");
    assert_eq!(p1[0].keys, keys(&["a", "b"]));
    assert_eq!(p1[0].context, ctx(&left));
    assert_eq!(p2[0].keys, keys(&["x", "y"]));
    assert_eq!(p2[0].context, ctx(&right));
    assert_ne!(
        p1[0].request_id, p2[0].request_id,
        "one request id per region"
    );

    let got = client
        .batch_get(
            ["y", "gone", "a", "x", "b", "zz"],
            ReadConsistency::Linearizable,
        )
        .await
        .unwrap();
    let want = [Some("3"), None, Some("2"), Some("1"), Some("4"), None];
    let want: Vec<_> = want
        .iter()
        .map(|v| v.map(|v| v.as_bytes().to_vec()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(s1.seen("batch_get")[0].keys, keys(&["gone", "a", "b"]));
    assert_eq!(s2.seen("batch_get")[0].keys, keys(&["y", "x", "zz"]));

    assert_eq!(client.batch_delete(["a", "x", "gone"]).await.unwrap(), 2);
    let empty: [&str; 0] = [];
    assert_eq!(
        client.batch_get(empty, ReadConsistency::Linearizable).await,
        Ok(vec![])
    );
}

#[tokio::test]
async fn a_batch_split_under_it_is_cut_again_keeping_its_request_id() {
    let (s1, a1) = serve_store().await;
    let (s2, a2) = serve_store().await;
    let whole = region(1, "", "", 1, &[peer(11, 1)]);
    let left = region(1, "", "m", 2, &[peer(11, 1)]);
    let right = region(3, "m", "", 2, &[peer(31, 2)]);
    s1.regions.lock().unwrap().insert(1, left.clone());
    *s1.current.lock().unwrap() = vec![left.clone(), right.clone()];
    s2.regions.lock().unwrap().insert(3, right.clone());
    let client = client_with_pd(&[(1, &a1), (2, &a2)], &[(whole.clone(), peer(11, 1))]).await;

    client.batch_put([("a", "1"), ("x", "2")]).await.unwrap();

    let p1 = s1.seen("batch_put");
    assert_eq!(p1.len(), 2, "the whole batch, then its left part: {p1:?}");
    assert_eq!(
        (p1[0].keys.clone(), p1[0].context),
        (keys(&["a", "x"]), ctx(&whole))
    );
    assert_eq!(
        (p1[1].keys.clone(), p1[1].context),
        (keys(&["a"]), ctx(&left))
    );
    let p2 = s2.seen("batch_put");
    assert_eq!(p2.len(), 1, "{p2:?}");
    assert_eq!(
        (p2[0].keys.clone(), p2[0].context),
        (keys(&["x"]), ctx(&right))
    );
    let id = p1[0].request_id;
    assert!(id.is_some());
    assert_eq!((p1[1].request_id, p2[0].request_id), (id, id));
}

#[tokio::test]
async fn a_full_scan_crosses_regions_in_key_order() {
    let (client, s1, s2, left, right) = two_regions().await;
    for k in ["a", "c", "l"] {
        s1.data.lock().unwrap().insert(k.into(), b"v".to_vec());
    }
    for k in ["m", "q", "z"] {
        s2.data.lock().unwrap().insert(k.into(), b"v".to_vec());
    }
    let page = client
        .scan(ScanRange::default(), ReadConsistency::Linearizable)
        .await
        .unwrap();
    let got: Vec<Vec<u8>> = page.kvs.into_iter().map(|(k, _)| k).collect();
    assert_eq!(got, keys(&["a", "c", "l", "m", "q", "z"]));
    assert!(!page.more);
    assert_eq!(s1.seen("scan")[0].context, ctx(&left));
    assert_eq!(
        s2.seen("scan")[0].keys,
        keys(&["m"]),
        "continued at the region's start"
    );
    assert_eq!(s2.seen("scan")[0].context, ctx(&right));

    let range = ScanRange {
        start: b"b".to_vec(),
        end: b"r".to_vec(),
        limit: 4,
        ..ScanRange::default()
    };
    let page = client
        .scan(range, ReadConsistency::Serializable)
        .await
        .unwrap();
    let got: Vec<Vec<u8>> = page.kvs.into_iter().map(|(k, _)| k).collect();
    assert_eq!(got, keys(&["c", "l", "m", "q"]));
}

#[tokio::test]
async fn the_plain_client_retries_region_errors_with_the_same_request_id() {
    let (store, addr) = serve_store().await;
    store.fail_first.lock().unwrap().extend([
        ErrorCode::EpochNotMatch,
        ErrorCode::KeyNotInRegion,
        ErrorCode::RegionNotFound,
    ]);
    let client = Client::with_options([addr], opts()).unwrap();
    client.put("k", "v").await.unwrap();
    let puts = store.seen("put");
    assert_eq!(puts.len(), 4, "three refusals, then the write: {puts:?}");
    assert!(puts.iter().all(|p| p.context.is_none()));
    assert!(puts[0].request_id.is_some());
    assert!(puts.iter().all(|p| p.request_id == puts[0].request_id));

    store
        .fail_first
        .lock()
        .unwrap()
        .extend([ErrorCode::RegionNotFound, ErrorCode::EpochNotMatch]);
    let got = client.get_with("k", ReadConsistency::Serializable).await;
    assert_eq!(got, Ok(Some(b"v".to_vec())));
    assert!(client.region_cache().is_none());
}

#[tokio::test]
async fn group_calls_are_refused_in_pd_mode() {
    let (client, ..) = two_regions().await;
    assert!(matches!(client.check().await, Err(Error::Unsupported(_))));
    assert!(matches!(
        client.member_list().await,
        Err(Error::Unsupported(_))
    ));
}

#[tokio::test]
async fn an_unanswered_write_is_indeterminate_at_the_deadline() {
    let (store, addr) = serve(FakeStore {
        hang_puts: true,
        ..FakeStore::default()
    })
    .await;
    let r = region(1, "", "", 1, &[peer(11, 1)]);
    store.regions.lock().unwrap().insert(1, r.clone());
    let pd_addr = crate::pd::tests::serve(Arc::default()).await;
    let pd = PdClient::with_options([pd_addr.clone()], opts()).unwrap();
    let s = Store {
        id: 1,
        address: addr,
        ..Store::default()
    };
    pd.put_store(s, 1).await.unwrap();
    pd.region_heartbeat(r, peer(11, 1), 0, 0).await.unwrap();
    let short = Options {
        deadline: Duration::from_millis(400),
        attempt_timeout: Duration::from_millis(100),
        ..opts()
    };
    let client = Client::with_pd([pd_addr], short).unwrap();

    let started = tokio::time::Instant::now();
    let r = client.put("k", "v").await;
    assert!(matches!(r, Err(Error::Indeterminate(_))), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "one deadline");
    let puts = store.seen("put");
    assert!(puts.len() >= 2, "retried: {puts:?}");
    assert!(puts.iter().all(|p| p.request_id == puts[0].request_id));
}

/// One region on two stores whose leader (store 1, PD says) is `leader`; store 2 serves the
/// region too. Options: turns of 300 ms, attempts of up to 2 s, a 3 s deadline.
async fn leader_and_follower(leader: FakeStore) -> (Client, Arc<FakeStore>, Arc<FakeStore>) {
    let (s1, a1) = serve(leader).await;
    let (s2, a2) = serve_store().await;
    let r = region(1, "", "", 1, &[peer(11, 1), peer(12, 2)]);
    s1.regions.lock().unwrap().insert(1, r.clone());
    s2.regions.lock().unwrap().insert(1, r.clone());
    let pd_addr = crate::pd::tests::serve(Arc::default()).await;
    let pd = PdClient::with_options([pd_addr.clone()], opts()).unwrap();
    for (id, address) in [(1, a1), (2, a2)] {
        let store = Store {
            id,
            address,
            ..Store::default()
        };
        pd.put_store(store, id).await.unwrap();
    }
    pd.region_heartbeat(r, peer(11, 1), 0, 0).await.unwrap();
    let timing = Options {
        attempt_timeout: Duration::from_secs(2),
        election_timeout: Duration::from_millis(300),
        ..opts()
    };
    (Client::with_pd([pd_addr], timing).unwrap(), s1, s2)
}

#[tokio::test]
async fn a_silent_leader_costs_a_turn_not_the_attempt_timeout() {
    let (client, s1, s2) = leader_and_follower(FakeStore {
        hang_puts: true,
        ..FakeStore::default()
    })
    .await;
    let started = tokio::time::Instant::now();
    client.put("k", "v").await.unwrap();
    let took = started.elapsed();
    // A 300 ms turn, then the other peer; a full attempt would be 2 s.
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    let (tried, done) = (s1.seen("put"), s2.seen("put"));
    assert_eq!((tried.len(), done.len()), (1, 1), "{tried:?} {done:?}");
    assert_eq!(done[0].request_id, tried[0].request_id, "same request id");
}

#[tokio::test]
async fn a_slow_leader_still_answers_its_first_attempt() {
    // The leader takes 800 ms (past the 300 ms turn); the other peer names it as the leader.
    let (client, s1, s2) = leader_and_follower(FakeStore {
        put_delay: Duration::from_millis(800),
        ..FakeStore::default()
    })
    .await;
    let hint = LeaderHint {
        id: 1,
        addr: client
            .pd()
            .unwrap()
            .get_store(1)
            .await
            .unwrap()
            .unwrap()
            .address,
        peer_id: 11,
    };
    s2.not_leader.lock().unwrap().insert(1, hint);
    let started = tokio::time::Instant::now();
    client.put("k", "v").await.unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    // Sent once to the leader: its hint back there did not start a second attempt.
    let tried = s1.seen("put");
    assert_eq!(tried.len(), 1, "{tried:?}");
    assert!(
        !s2.seen("put").is_empty(),
        "the other peer was asked meanwhile"
    );
    assert_eq!(
        s1.data.lock().unwrap().get(b"k".as_slice()),
        Some(&b"v".to_vec())
    );
}

#[tokio::test]
async fn a_store_that_moved_is_looked_up_in_pd_again() {
    let (store, addr) = serve_store().await;
    let r = region(1, "", "", 1, &[peer(11, 1)]);
    store.regions.lock().unwrap().insert(1, r.clone());
    // PD knows where store 1 is now; the client still has the address it had before.
    let client = client_with_pd(&[(1, &addr)], &[(r, peer(11, 1))]).await;
    let cache = client.region_cache().unwrap();
    cache.set_store(1, crate::pd::tests::dead_addr());
    client.put("k", "v").await.unwrap();
    assert_eq!(cache.store_address(1), Some(addr));
    assert_eq!(store.seen("put").len(), 1);
}

#[tokio::test]
async fn a_failed_store_address_is_looked_up_again_with_backoff() {
    let pd = PdClient::with_options([crate::pd::tests::dead_addr()], opts()).unwrap();
    let o = Options {
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
        ..opts()
    };
    let routing = Routing::new(pd, &o);
    assert!(!routing.refresh_due(1), "nothing failed yet");
    routing.on_store_failure(1);
    assert!(routing.refresh_due(1), "at once after a failure");
    assert!(!routing.refresh_due(1), "then not before the pause");
    // Further failures do not move the schedule forward.
    routing.on_store_failure(1);
    assert!(!routing.refresh_due(1));
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(routing.refresh_due(1), "after the first pause");
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(!routing.refresh_due(1), "the pause doubled");
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(routing.refresh_due(1));
    // An answer from the store ends the look-ups.
    routing.on_store_answer(1);
    assert!(!routing.refresh_due(1));
}
