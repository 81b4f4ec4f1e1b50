//! The client against in-process fake nodes: scan paging, the replica check, and how a
//! failed connection is classified. The fakes speak the real proto, so no rdb-server is needed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdb_proto::kv::kv_server::{Kv, KvServer};
use rdb_proto::kv::{
    CasRequest, CasResponse, CheckRequest, CheckResponse, DeleteRequest, DeleteResponse,
    Error as PbError, ErrorCode, GetRequest, GetResponse, HashRequest, HashResponse, KeyValue,
    LeaderHint, PutRequest, PutResponse, ScanRequest, ScanResponse, StatusRequest, StatusResponse,
};
use tonic::{Request, Response, Status};

use crate::error::is_connect_failure;
use crate::{prefix_end, Client, Error, Options, ReadConsistency, ScanRange};

/// What a fake node does.
#[derive(Default)]
struct Fake {
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Cut a scan page once its keys and values pass this many bytes (0: never).
    page_bytes: usize,
    /// Cut like an older server: `more` without `next_start`.
    no_next_start: bool,
    /// Scan requests seen.
    scans: Mutex<Vec<ScanRequest>>,
    /// `Some(addr)`: answer Check with NotLeader pointing there.
    not_leader: Option<String>,
    /// The hash this node reports, after answering "not ready" this many times.
    hash: u64,
    not_ready_for: u32,
    hash_calls: AtomicU32,
    /// Answer Hash with UNIMPLEMENTED, as today's server does.
    unimplemented: bool,
}

/// The gRPC face of a [`Fake`] (shared with the test, which inspects it).
struct FakeNode(Arc<Fake>);

impl std::ops::Deref for FakeNode {
    type Target = Fake;
    fn deref(&self) -> &Fake {
        &self.0
    }
}

#[tonic::async_trait]
impl Kv for FakeNode {
    async fn put(&self, _: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn get(&self, _: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn delete(&self, _: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn cas(&self, _: Request<CasRequest>) -> Result<Response<CasResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(StatusResponse {
            node_id: self.hash % 10,
            ..Default::default()
        }))
    }

    async fn scan(&self, r: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
        let r = r.into_inner();
        self.scans.lock().unwrap().push(r.clone());
        let (start, end) = if r.prefix.is_empty() {
            (r.start, r.end)
        } else {
            (r.prefix.clone(), prefix_end(&r.prefix))
        };
        let limit = if r.limit == 0 { 1000 } else { r.limit as usize };
        let mut kvs = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        for (k, v) in self.data.range(start..) {
            if !end.is_empty() && *k >= end {
                break;
            }
            if kvs.len() == limit || (self.page_bytes > 0 && bytes >= self.page_bytes) {
                more = true;
                break;
            }
            bytes += k.len() + v.len();
            kvs.push(KeyValue {
                key: k.clone(),
                value: v.clone(),
                meta: None,
            });
        }
        let next_start = match kvs.last() {
            Some(kv) if more && !self.no_next_start => [kv.key.as_slice(), &[0]].concat(),
            _ => Vec::new(),
        };
        Ok(Response::new(ScanResponse {
            revision: 0,
            error: None,
            kvs,
            more,
            next_start,
        }))
    }

    async fn transfer_leader(
        &self,
        _: Request<rdb_proto::kv::TransferLeaderRequest>,
    ) -> Result<Response<rdb_proto::kv::TransferLeaderResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn merge_region(
        &self,
        _: Request<rdb_proto::kv::MergeRegionRequest>,
    ) -> Result<Response<rdb_proto::kv::MergeRegionResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn batch_put(
        &self,
        _: Request<rdb_proto::kv::BatchPutRequest>,
    ) -> Result<Response<rdb_proto::kv::BatchPutResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn batch_get(
        &self,
        _: Request<rdb_proto::kv::BatchGetRequest>,
    ) -> Result<Response<rdb_proto::kv::BatchGetResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn batch_delete(
        &self,
        _: Request<rdb_proto::kv::BatchDeleteRequest>,
    ) -> Result<Response<rdb_proto::kv::BatchDeleteResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn member_list(
        &self,
        _: Request<rdb_proto::kv::MemberListRequest>,
    ) -> Result<Response<rdb_proto::kv::MemberListResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn member_change(
        &self,
        _: Request<rdb_proto::kv::MemberChangeRequest>,
    ) -> Result<Response<rdb_proto::kv::MemberChangeResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn check(&self, _: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let error = self.not_leader.as_ref().map(|addr| PbError {
            code: ErrorCode::NotLeader as i32,
            message: "not leader".into(),
            leader: Some(LeaderHint {
                id: 1,
                addr: addr.clone(),
                peer_id: 0,
            }),
            regions: Vec::new(),
        });
        Ok(Response::new(CheckResponse {
            index: if error.is_some() { 0 } else { 42 },
            error,
        }))
    }

    async fn compact(
        &self,
        _: Request<rdb_proto::kv::CompactRequest>,
    ) -> Result<Response<rdb_proto::kv::CompactResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn hash(&self, r: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        if self.unimplemented {
            return Err(Status::unimplemented("hash: not yet implemented"));
        }
        assert_eq!(
            r.into_inner().index,
            42,
            "every node is asked at the hash point"
        );
        let calls = self.hash_calls.fetch_add(1, Ordering::Relaxed);
        let ready = calls >= self.not_ready_for;
        Ok(Response::new(HashResponse {
            error: None,
            ready,
            hash: if ready { self.hash } else { 0 },
            records: if ready { 7 } else { 0 },
            applied_index: if ready { 42 } else { 41 },
        }))
    }
}

/// Serves `fake` on a fresh 127.0.0.1 port; returns its address.
async fn serve(fake: Arc<Fake>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(KvServer::new(FakeNode(fake)))
            .serve_with_incoming(incoming),
    );
    addr
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

fn data(n: usize, value_len: usize) -> BTreeMap<Vec<u8>, Vec<u8>> {
    (0..n)
        .map(|i| (format!("k{i:04}").into_bytes(), vec![b'v'; value_len]))
        .collect()
}

fn keys(kvs: &[(Vec<u8>, Vec<u8>)]) -> Vec<String> {
    kvs.iter()
        .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
        .collect()
}

#[tokio::test]
async fn scan_follows_byte_capped_pages_to_the_end_of_the_range() {
    let fake = Arc::new(Fake {
        data: data(100, 1000),
        page_bytes: 10_000,
        ..Fake::default()
    });
    let client = Client::with_options([serve(fake.clone()).await], opts()).unwrap();
    let range = ScanRange {
        start: b"k0010".to_vec(),
        end: b"k0090".to_vec(),
        ..ScanRange::default()
    };
    let page = client
        .scan(range, ReadConsistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(page.kvs.len(), 80);
    assert_eq!(keys(&page.kvs).first().unwrap(), "k0010");
    assert_eq!(keys(&page.kvs).last().unwrap(), "k0089");
    assert!(!page.more, "the whole range was read");
    let scans = fake.scans.lock().unwrap();
    assert_eq!(scans.len(), 8, "one request per 10 pairs: {scans:?}");
    assert!(scans.iter().all(|s| s.end == b"k0090"));
    assert_eq!(scans[1].start, b"k0019\0");
}

#[tokio::test]
async fn scan_stops_at_the_callers_limit_and_says_more() {
    let fake = Arc::new(Fake {
        data: data(100, 1000),
        page_bytes: 10_000,
        ..Fake::default()
    });
    let client = Client::with_options([serve(fake.clone()).await], opts()).unwrap();
    let range = ScanRange {
        limit: 25,
        ..ScanRange::default()
    };
    let page = client
        .scan(range, ReadConsistency::Serializable)
        .await
        .unwrap();
    assert_eq!(page.kvs.len(), 25);
    assert!(page.more, "the caller's limit cut it");
    let limits: Vec<u32> = fake.scans.lock().unwrap().iter().map(|s| s.limit).collect();
    assert_eq!(
        limits,
        [25, 15, 5],
        "each page asks only for what is still wanted"
    );

    // A limit that ends exactly at the last key: nothing more.
    let range = ScanRange {
        start: b"k0090".to_vec(),
        limit: 10,
        ..ScanRange::default()
    };
    let page = client
        .scan(range, ReadConsistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(page.kvs.len(), 10);
    assert!(!page.more);
}

#[tokio::test]
async fn prefix_scan_continues_as_a_range_to_the_end_of_the_prefix() {
    let mut d = data(0, 0);
    for i in 0..30 {
        d.insert(format!("a/{i:02}").into_bytes(), vec![b'x'; 500]);
        d.insert(format!("b/{i:02}").into_bytes(), vec![b'x'; 500]);
    }
    let fake = Arc::new(Fake {
        data: d,
        page_bytes: 2_000,
        ..Fake::default()
    });
    let client = Client::with_options([serve(fake.clone()).await], opts()).unwrap();
    let range = ScanRange {
        prefix: b"a/".to_vec(),
        ..ScanRange::default()
    };
    let page = client
        .scan(range, ReadConsistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(page.kvs.len(), 30, "every a/ key and no b/ key");
    assert!(keys(&page.kvs).iter().all(|k| k.starts_with("a/")));
    let scans = fake.scans.lock().unwrap();
    assert_eq!(scans[0].prefix, b"a/");
    for s in &scans[1..] {
        assert!(s.prefix.is_empty(), "later pages are ranges: {s:?}");
        assert_eq!(s.end, b"a0", "the range ends where the prefix does");
    }
}

#[tokio::test]
async fn scan_pages_even_without_next_start() {
    // An older server (or its page-size maximum) cuts with `more` but no next key.
    let fake = Arc::new(Fake {
        data: data(50, 10),
        page_bytes: 100,
        no_next_start: true,
        ..Fake::default()
    });
    let client = Client::with_options([serve(fake).await], opts()).unwrap();
    let page = client
        .scan(ScanRange::default(), ReadConsistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(page.kvs.len(), 50);
    assert!(!page.more);
}

#[tokio::test]
async fn check_follows_the_leader_and_waits_for_every_hash() {
    let leader = serve(Arc::new(Fake {
        hash: 11,
        ..Fake::default()
    }))
    .await;
    let slow = serve(Arc::new(Fake {
        hash: 12,
        not_ready_for: 3,
        not_leader: Some(leader.clone()),
        ..Fake::default()
    }))
    .await;
    let client = Client::with_options([slow.clone(), leader.clone()], opts()).unwrap();
    let report = client.check().await.unwrap();
    assert_eq!(report.index, 42);
    assert_eq!(report.nodes.len(), 2);
    assert!(report.all_ready(), "{report:?}");
    assert_eq!(report.nodes[0].endpoint, slow);
    assert_eq!(report.nodes[0].node_id, Some(2));
    assert_eq!(report.nodes[0].applied_index, 42);
    assert!(!report.consistent(), "hashes 11 and 12 differ: {report:?}");
}

#[tokio::test]
async fn check_reports_equal_hashes_as_consistent_and_a_silent_node_as_not_ready() {
    let a = serve(Arc::new(Fake {
        hash: 21,
        ..Fake::default()
    }))
    .await;
    let b = serve(Arc::new(Fake {
        hash: 21,
        ..Fake::default()
    }))
    .await;
    let client = Client::with_options([a.clone(), b.clone()], opts()).unwrap();
    let report = client.check().await.unwrap();
    assert!(report.consistent(), "{report:?}");

    let old = serve(Arc::new(Fake {
        hash: 21,
        unimplemented: true,
        ..Fake::default()
    }))
    .await;
    let client = Client::with_options([a, old], opts()).unwrap();
    let report = client.check().await.unwrap();
    assert!(!report.nodes[1].ready);
    assert!(report.nodes[1]
        .error
        .as_deref()
        .unwrap()
        .contains("unsupported"));
    assert!(!report.consistent());
}

/// A 127.0.0.1 port nobody listens on (bound, then released).
fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    addr
}

#[tokio::test]
async fn a_refused_connection_is_classified_by_type() {
    let addr = dead_addr();
    let mut c = crate::connect_lazy(&addr, &opts()).unwrap();
    let status = c.status(StatusRequest {}).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(is_connect_failure(&status), "{status:?}");
    // The words alone do not make a connect failure: only the error's type does.
    assert!(!is_connect_failure(&Status::unavailable(
        "tcp connect error: Connection refused"
    )));
}

#[tokio::test]
async fn a_write_that_could_not_connect_is_unavailable_not_indeterminate() {
    let client = Client::with_options(
        [dead_addr()],
        Options {
            deadline: Duration::from_millis(300),
            ..opts()
        },
    )
    .unwrap();
    match client.put("k", "v").await {
        Err(Error::Unavailable(_)) => {}
        other => panic!("a write never sent was not applied: {other:?}"),
    }
}
