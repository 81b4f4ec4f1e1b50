//! rdb-pd as real processes: timestamps stay strictly increasing across kill -9, restarts and a
//! paused leader with concurrent callers; the metadata API survives a minority failure and a
//! full restart; bad requests get typed errors.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdb_proto::pd::pd_client::PdClient;
use rdb_proto::pd::*;
use rdb_tests::cluster::TestCluster;
use tonic::transport::Channel;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// A test's view of a PD group: try the known leader, follow NOT_LEADER hints, rotate on
/// UNAVAILABLE or transport errors, until a deadline.
#[derive(Clone)]
struct Pd {
    endpoints: Vec<String>,
    leader: Arc<Mutex<usize>>,
}

/// An answer's error, if any: (code, message, hinted leader address).
type Err = Option<(i32, String, Option<String>)>;

fn err_of(e: &Option<Error>) -> Err {
    e.as_ref().map(|e| {
        (
            e.code,
            e.message.clone(),
            e.leader.as_ref().map(|l| l.client_addr.clone()),
        )
    })
}

async fn connect(addr: &str) -> Option<PdClient<Channel>> {
    let ep = Channel::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_millis(300))
        .timeout(Duration::from_secs(1));
    Some(PdClient::new(ep.connect().await.ok()?))
}

impl Pd {
    fn new(c: &TestCluster) -> Pd {
        Pd {
            endpoints: c.endpoints(),
            leader: Arc::new(Mutex::new(0)),
        }
    }

    /// Runs `call` against the leader until it answers with something other than NOT_LEADER,
    /// UNAVAILABLE or INDETERMINATE (then that answer), or `deadline` passes (then the last
    /// answer, or None if nothing answered).
    async fn try_call<T, F, Fut>(&self, deadline: Duration, mut call: F) -> Option<T>
    where
        F: FnMut(PdClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<(T, Err), tonic::Status>>,
    {
        let until = Instant::now() + deadline;
        loop {
            let i = *self.leader.lock().unwrap();
            let mut next = (i + 1) % self.endpoints.len();
            if let Some(client) = connect(&self.endpoints[i]).await {
                if let Ok((t, err)) = call(client).await {
                    match err {
                        Some((code, _, hint)) if code == ErrorCode::NotLeader as i32 => {
                            if let Some(h) =
                                hint.and_then(|h| self.endpoints.iter().position(|e| *e == h))
                            {
                                next = h;
                            }
                        }
                        Some((code, _, _))
                            if code == ErrorCode::Unavailable as i32
                                || code == ErrorCode::Indeterminate as i32 => {}
                        _ => return Some(t),
                    }
                    if Instant::now() >= until {
                        return Some(t);
                    }
                }
            }
            *self.leader.lock().unwrap() = next;
            if Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// [`Pd::try_call`] that must get an answer.
    async fn call<T, F, Fut>(&self, deadline: Duration, call: F) -> T
    where
        F: FnMut(PdClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<(T, Err), tonic::Status>>,
    {
        self.try_call(deadline, call)
            .await
            .unwrap_or_else(|| panic!("PD did not answer within {deadline:?}"))
    }

    async fn tso(&self, count: u32, deadline: Duration) -> TsoResponse {
        self.call(deadline, |mut c| async move {
            let r = c.tso(TsoRequest { count }).await?.into_inner();
            let e = err_of(&r.error);
            Ok((r, e))
        })
        .await
    }

    async fn alloc(&self, count: u32) -> AllocIdResponse {
        self.call(SECS(20), |mut c| async move {
            let r = c.alloc_id(AllocIdRequest { count }).await?.into_inner();
            let e = err_of(&r.error);
            Ok((r, e))
        })
        .await
    }

    async fn leader_id(&self) -> u64 {
        let r = self
            .call(SECS(20), |mut c| async move {
                let r = c.get_members(GetMembersRequest {}).await?.into_inner();
                let e = match &r.leader {
                    Some(_) => None,
                    None => Some((ErrorCode::Unavailable as i32, "no leader yet".into(), None)),
                };
                Ok((r, e))
            })
            .await;
        r.leader.map(|l| l.id).expect("a PD leader")
    }
}

fn ts(t: &Timestamp) -> u64 {
    t.physical << 16 | t.logical
}

/// One answered call: when it was made and answered, and the timestamps it got.
#[derive(Debug, Clone, Copy)]
struct Call {
    caller: usize,
    invoke: Instant,
    complete: Instant,
    first: u64,
    last: u64,
}

/// No timestamp twice; a call that began after another ended got larger timestamps.
fn check_history(mut calls: Vec<Call>) {
    calls.sort_by_key(|c| c.first);
    for w in calls.windows(2) {
        assert!(
            w[0].last < w[1].first,
            "timestamps overlap: {:?} and {:?}",
            w[0],
            w[1]
        );
    }
    let mut by_complete = calls.clone();
    by_complete.sort_by_key(|c| c.complete);
    let mut by_invoke = calls;
    by_invoke.sort_by_key(|c| c.invoke);
    let (mut j, mut max_last, mut max_call) = (0, 0u64, None);
    for b in &by_invoke {
        while j < by_complete.len() && by_complete[j].complete < b.invoke {
            if by_complete[j].last >= max_last {
                max_last = by_complete[j].last;
                max_call = Some(by_complete[j]);
            }
            j += 1;
        }
        assert!(
            max_call.is_none() || b.first > max_last,
            "a timestamp went back: {b:?} began after {max_call:?} ended"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timestamps_strictly_increase_across_kill9_restart_and_a_paused_leader() {
    let mut c = TestCluster::start_pd(3, "tso_window_ms = 1000");
    let pd = Pd::new(&c);
    pd.leader_id().await;
    let calls = Arc::new(Mutex::new(Vec::<Call>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = (0..16)
        .map(|caller| {
            let (pd, calls, stop) = (pd.clone(), calls.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let count = 1 + (n % 7);
                    n += 1;
                    let invoke = Instant::now();
                    let r = pd
                        .try_call(SECS(1), |mut c| async move {
                            let r = c.tso(TsoRequest { count }).await?.into_inner();
                            let e = err_of(&r.error);
                            Ok((r, e))
                        })
                        .await;
                    let Some(r) = r else { continue };
                    let Some(first) = r.first.as_ref().filter(|_| r.error.is_none()) else {
                        continue;
                    };
                    assert_eq!(r.count, count);
                    let first = ts(first);
                    calls.lock().unwrap().push(Call {
                        caller,
                        invoke,
                        complete: Instant::now(),
                        first,
                        last: first + u64::from(count) - 1,
                    });
                }
            })
        })
        .collect();
    let answered = || calls.lock().unwrap().len();
    let progress = |what: &'static str| {
        let before = answered();
        let calls = calls.clone();
        async move {
            TestCluster::wait_until(what, SECS(30), || {
                let n = calls.lock().unwrap().len();
                async move { n > before + 100 }
            })
            .await;
        }
    };
    progress("timestamps at the start").await;
    let l = pd.leader_id().await;
    c.kill(l);
    progress("timestamps after the leader was killed").await;
    c.restart(l);
    progress("timestamps after it restarted").await;
    let l = pd.leader_id().await;
    c.pause(l);
    progress("timestamps while the old leader is paused").await;
    c.resume(l);
    progress("timestamps after the old leader resumed").await;
    // Every node down at once, then back: the window persisted ahead keeps time moving on.
    for id in 1..=3 {
        c.kill(id);
    }
    for id in 1..=3 {
        c.restart(id);
    }
    progress("timestamps after a full restart").await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in callers {
        t.await.expect("caller");
    }
    let calls = calls.lock().unwrap().clone();
    let per_caller = (0..16)
        .filter(|i| calls.iter().any(|c| c.caller == *i))
        .count();
    assert_eq!(per_caller, 16, "every caller got timestamps");
    check_history(calls);
}

#[tokio::test]
async fn the_tso_stream_answers_every_request_in_order_with_increasing_timestamps() {
    let c = TestCluster::start_pd(1, "");
    let pd = Pd::new(&c);
    assert_eq!(pd.tso(1, SECS(20)).await.error, None);
    let mut client = connect(&c.nodes[0].client_addr).await.expect("connect");
    let reqs = (1..=200u32).map(|i| TsoRequest { count: 1 + i % 5 });
    let mut answers = client
        .tso_stream(tokio_stream::iter(reqs))
        .await
        .expect("stream")
        .into_inner();
    let mut last = 0u64;
    let mut n = 0u32;
    while let Some(r) = answers.message().await.expect("answer") {
        n += 1;
        assert_eq!(r.error, None);
        assert_eq!(r.count, 1 + n % 5, "answers come in request order");
        let first = ts(r.first.as_ref().expect("a timestamp"));
        assert!(first > last, "{first} after {last}");
        last = first + u64::from(r.count) - 1;
    }
    assert_eq!(n, 200);
}

#[tokio::test]
async fn a_clock_stepped_back_a_minute_does_not_take_timestamps_back() {
    let mut c = TestCluster::start_pd(1, "tso_window_ms = 3000");
    let pd = Pd::new(&c);
    let before = pd.tso(1, SECS(20)).await;
    assert_eq!(before.error, None);
    let before = ts(before.first.as_ref().expect("a timestamp"));
    c.kill(1);
    c.restart_with_env(1, &[("RDB_PD_CLOCK_SKEW_MS", "-60000")]);
    let after = pd.tso(1, SECS(20)).await;
    assert_eq!(after.error, None);
    let after = ts(after.first.as_ref().expect("a timestamp"));
    assert!(
        after > before,
        "timestamp went back after a clock step: {before} then {after}"
    );
}

#[tokio::test]
async fn a_persisted_limit_years_ahead_of_the_clock_is_refused_with_the_cause_and_never_served() {
    let mut c = TestCluster::start_pd(1, "tso_window_ms = 3000");
    let pd = Pd::new(&c);
    // A clock set ten years ahead leaves a limit ten years ahead, as a window without a bound
    // (before tso_window_ms had one) did.
    const TEN_YEARS_MS: u64 = 10 * 365 * 86_400_000;
    c.kill(1);
    c.restart_with_env(
        1,
        &[("RDB_PD_CLOCK_SKEW_MS", TEN_YEARS_MS.to_string().as_str())],
    );
    let ahead = pd.tso(1, SECS(20)).await;
    assert_eq!(ahead.error, None);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64;
    assert!(ahead.first.as_ref().expect("a timestamp").physical > now + TEN_YEARS_MS / 2);
    // Back on the right clock: no timestamp from ten years ahead, and a refusal that says why.
    c.kill(1);
    c.restart(1);
    let r = pd.tso(1, SECS(20)).await;
    assert_eq!(r.first, None, "served from the far future: {r:?}");
    let (code, message, _) = err_of(&r.error).expect("refused");
    assert_eq!(code, ErrorCode::FailedPrecondition as i32, "{message}");
    assert!(
        message.contains("days ahead of this PD node's clock") && message.contains("correct it"),
        "{message}"
    );
    // The CLI says so in one line at once, with an exit code scripts do not retry.
    let started = Instant::now();
    let out = std::process::Command::new(rdb_tests::cluster::bin_dir().join("rdb-cli"))
        .args(["--pd", &c.endpoints().join(","), "tso"])
        .output()
        .expect("run rdb-cli");
    let explained = rdb_tests::cluster::explain(&out);
    assert_eq!(out.status.code(), Some(1), "{explained}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{explained}");
    assert!(stderr.contains("days ahead"), "{explained}");
    assert!(
        started.elapsed() < SECS(8),
        "the CLI retried a refusal: {explained}"
    );
    let log = std::fs::read_to_string(c.log_path(1)).expect("PD log");
    assert!(
        log.contains("timestamps refused: the persisted limit is implausibly far ahead"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_survives_a_minority_failure_and_a_full_restart_and_bad_requests_are_typed() {
    let mut c = TestCluster::start_pd(3, "store_down_after_secs = 3");
    let pd = Pd::new(&c);
    let l = pd.leader_id().await;

    // Bootstrap once.
    let region = Region {
        id: 2,
        start_key: vec![],
        end_key: vec![],
        epoch: Some(RegionEpoch {
            version: 1,
            conf_ver: 1,
        }),
        peers: vec![Peer {
            id: 3,
            store_id: 1,
            learner: false,
        }],
    };
    let store = |id: u64, address: &str| Store {
        id,
        address: address.into(),
        ..Default::default()
    };
    let boot = |s: Store, r: Region| {
        let pd = pd.clone();
        async move {
            pd.call(SECS(20), |mut cl| {
                let (s, r) = (s.clone(), r.clone());
                async move {
                    let x = cl
                        .bootstrap(BootstrapRequest {
                            store: Some(s),
                            region: Some(r),
                            store_token: 0,
                        })
                        .await?
                        .into_inner();
                    let e = err_of(&x.error);
                    Ok((x, e))
                }
            })
            .await
        }
    };
    // Ids never repeat; the store and region ids below are among the first five.
    let a = pd.alloc(5).await;
    assert_eq!((a.error.clone(), a.first), (None, 1));
    let r = boot(store(1, "127.0.0.1:1"), region.clone()).await;
    assert_eq!(r.error, None);
    let r = boot(store(1, "127.0.0.1:1"), region.clone()).await;
    assert_eq!(
        r.error.map(|e| e.code),
        Some(ErrorCode::AlreadyBootstrapped as i32)
    );
    let b = pd.alloc(3).await;
    assert!(b.first >= a.first + 5, "{a:?} then {b:?}");

    // Bad requests: typed, nothing changes.
    let put_store = |s: Store| {
        let pd = pd.clone();
        async move {
            pd.call(SECS(20), |mut cl| {
                let s = s.clone();
                async move {
                    let x = cl
                        .put_store(PutStoreRequest {
                            store: Some(s),
                            store_token: 0,
                        })
                        .await?
                        .into_inner();
                    let e = err_of(&x.error);
                    Ok((x, e))
                }
            })
            .await
        }
    };
    let r = put_store(store(4, "")).await;
    assert_eq!(
        r.error.map(|e| e.code),
        Some(ErrorCode::InvalidArgument as i32)
    );
    let r = pd.tso(0, SECS(10)).await;
    assert_eq!(
        r.error.map(|e| e.code),
        Some(ErrorCode::InvalidArgument as i32)
    );
    assert_eq!(put_store(store(5, "127.0.0.1:5")).await.error, None);

    // Regions: a split is accepted, a stale epoch refused, and so are a heartbeat over a newer
    // region's keys and one whose leader is no peer or on no store PD knows.
    let heartbeat_led = |r: Region, leader: Peer| {
        let pd = pd.clone();
        async move {
            pd.call(SECS(20), |mut cl| {
                let r = r.clone();
                async move {
                    let x = cl
                        .region_heartbeat(RegionHeartbeatRequest {
                            leader: Some(leader),
                            region: Some(r),
                            approximate_size: 10,
                            approximate_keys: 1,
                        })
                        .await?
                        .into_inner();
                    let e = err_of(&x.error);
                    Ok((x, e))
                }
            })
            .await
        }
    };
    let heartbeat = |r: Region| heartbeat_led(r.clone(), r.peers[0]);
    let left = Region {
        end_key: b"m".to_vec(),
        epoch: Some(RegionEpoch {
            version: 2,
            conf_ver: 1,
        }),
        ..region.clone()
    };
    let right = Region {
        id: 6,
        start_key: b"m".to_vec(),
        end_key: vec![],
        epoch: Some(RegionEpoch {
            version: 2,
            conf_ver: 1,
        }),
        peers: vec![Peer {
            id: 7,
            store_id: 1,
            learner: false,
        }],
    };
    assert_eq!(heartbeat(left.clone()).await.error, None);
    assert_eq!(heartbeat(right.clone()).await.error, None);
    let r = heartbeat(region.clone()).await;
    assert_eq!(r.error.map(|e| e.code), Some(ErrorCode::StaleEpoch as i32));
    let forged = Region {
        id: 8,
        start_key: b"p".to_vec(),
        end_key: b"q".to_vec(),
        ..region.clone()
    };
    let r = heartbeat(forged).await;
    assert_eq!(r.error.map(|e| e.code), Some(ErrorCode::StaleEpoch as i32));
    let r = heartbeat_led(
        right.clone(),
        Peer {
            id: 3,
            store_id: 1,
            learner: false,
        },
    )
    .await;
    assert_eq!(
        err_of(&r.error).map(|(code, m, _)| (code, m.contains("not one of its peers"))),
        Some((ErrorCode::InvalidArgument as i32, true))
    );
    let elsewhere = Region {
        peers: vec![Peer {
            id: 7,
            store_id: 4,
            learner: false,
        }],
        epoch: Some(RegionEpoch {
            version: 3,
            conf_ver: 1,
        }),
        ..right.clone()
    };
    let r = heartbeat(elsewhere).await;
    assert_eq!(
        err_of(&r.error).map(|(code, m, _)| (code, m.contains("does not know"))),
        Some((ErrorCode::InvalidArgument as i32, true))
    );
    let get_region = |key: &'static [u8]| {
        let pd = pd.clone();
        async move {
            pd.call(SECS(20), |mut cl| async move {
                let x = cl
                    .get_region(GetRegionRequest { key: key.to_vec() })
                    .await?
                    .into_inner();
                let e = err_of(&x.error);
                Ok((x, e))
            })
            .await
        }
    };
    assert_eq!(get_region(b"a").await.region, Some(left.clone()));
    assert_eq!(get_region(b"x").await.region, Some(right.clone()));
    assert_eq!(
        get_region(b"x").await.leader,
        Some(Peer {
            id: 7,
            store_id: 1,
            learner: false
        })
    );

    // A store that stops heartbeating is reported Down; one that heartbeats stays Up.
    let stores = || {
        let pd = pd.clone();
        async move {
            pd.call(SECS(20), |mut cl| async move {
                let x = cl
                    .get_all_stores(GetAllStoresRequest {
                        exclude_tombstones: false,
                    })
                    .await?
                    .into_inner();
                let e = err_of(&x.error);
                Ok((x, e))
            })
            .await
            .stores
        }
    };
    let beat = |id: u64| {
        let pd = pd.clone();
        async move {
            pd.call(SECS(20), |mut cl| async move {
                let x = cl
                    .store_heartbeat(StoreHeartbeatRequest {
                        store_id: id,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                let e = err_of(&x.error);
                Ok((x, e))
            })
            .await
        }
    };
    assert_eq!(
        beat(999).await.error.map(|e| e.code),
        Some(ErrorCode::NotFound as i32)
    );
    let deadline = Instant::now() + SECS(20);
    loop {
        assert_eq!(beat(1).await.error, None);
        let s = stores().await;
        let state = |id: u64| s.iter().find(|x| x.id == id).map(|x| x.state);
        if state(5) == Some(StoreState::Down as i32) {
            assert_eq!(state(1), Some(StoreState::Up as i32), "{s:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "store 5 never reported Down: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Tombstone: final.
    let r = pd
        .call(SECS(20), |mut cl| async move {
            let x = cl
                .set_store_state(SetStoreStateRequest {
                    store_id: 5,
                    state: StoreState::Tombstone as i32,
                })
                .await?
                .into_inner();
            let e = err_of(&x.error);
            Ok((x, e))
        })
        .await;
    assert_eq!(r.error, None);
    let r = put_store(store(5, "127.0.0.1:5")).await;
    assert_eq!(
        r.error.map(|e| e.code),
        Some(ErrorCode::InvalidArgument as i32)
    );

    // A follower points to the leader.
    let f = (1..=3).find(|&i| i != l).expect("a follower");
    let mut direct = connect(&c.nodes[f as usize - 1].client_addr)
        .await
        .expect("connect");
    let r = direct
        .alloc_id(AllocIdRequest { count: 1 })
        .await
        .expect("rpc")
        .into_inner();
    let leader_addr = c.nodes[l as usize - 1].client_addr.clone();
    assert_eq!(
        err_of(&r.error).map(|(code, _, hint)| (code, hint)),
        Some((ErrorCode::NotLeader as i32, Some(leader_addr)))
    );

    // A minority down: still serving.
    c.kill(f);
    let d = pd.alloc(1).await;
    assert_eq!(d.error, None);
    assert!(d.first >= b.first + 3);
    assert_eq!(pd.tso(1, SECS(20)).await.error, None);

    // Everything restarts: the state is still there, ids go on above.
    for id in 1..=3 {
        c.kill(id);
        c.restart(id);
    }
    let e = pd.alloc(1).await;
    assert!(
        e.first > d.first,
        "ids went back after a restart: {d:?} then {e:?}"
    );
    assert_eq!(get_region(b"x").await.region, Some(right));
    let s = stores().await;
    assert_eq!(
        s.iter().find(|x| x.id == 5).map(|x| x.state),
        Some(StoreState::Tombstone as i32)
    );
}

#[tokio::test]
async fn rdb_pd_with_no_arguments_serves_on_2399_with_data_in_the_current_folder() {
    if std::net::TcpListener::bind("127.0.0.1:2399").is_err()
        || std::net::TcpListener::bind("127.0.0.1:2400").is_err()
    {
        eprintln!("ports 2399/2400 are taken; skipping the no-argument start");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = std::process::Command::new(rdb_tests::cluster::bin_dir().join("rdb-pd"))
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start rdb-pd");
    let pd = Pd {
        endpoints: vec!["127.0.0.1:2399".into()],
        leader: Arc::new(Mutex::new(0)),
    };
    let r = pd.tso(3, SECS(30)).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(r.error, None);
    assert_eq!(r.count, 3);
    assert!(r.first.map(|t| t.physical).unwrap_or(0) > 1_700_000_000_000);
    assert!(dir.path().join("rdb-pd-data").is_dir());
}

/// Runs `rdb-cli --pd <group> -o json ARGS` and parses its JSON output.
fn pd_cli(c: &TestCluster, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(rdb_tests::cluster::bin_dir().join("rdb-cli"))
        .arg("--pd")
        .arg(c.endpoints().join(","))
        .args(["-o", "json"])
        .args(args)
        .output()
        .expect("run rdb-cli");
    assert!(
        out.status.success(),
        "rdb-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("rdb-cli {args:?} printed no JSON ({e}): {:?}", out.stdout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pd_client_and_cli_work_against_a_real_group() {
    use rdb_client::pd::{
        Peer as CPeer, Region as CRegion, RegionEpoch as CEpoch, Store as CStore,
    };
    let mut c = TestCluster::start_pd(3, "");
    let pd = rdb_client::PdClient::new(c.endpoints()).expect("client");
    // Batched timestamps from concurrent callers: all distinct, each caller's increasing.
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let pd = pd.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..50 {
                    got.push(pd.timestamp().await.expect("timestamp").as_u64());
                }
                got
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        let got = t.await.expect("task");
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "a caller's timestamps went back"
        );
        all.extend(got);
    }
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), n, "a timestamp was handed out twice");

    let first = pd.alloc_ids(2).await.expect("ids");
    assert!(pd.alloc_ids(1).await.expect("ids") >= first + 2);
    pd.bootstrap(
        CStore {
            id: 1,
            address: "127.0.0.1:7".into(),
            ..Default::default()
        },
        CRegion {
            id: 2,
            start_key: vec![],
            end_key: vec![],
            epoch: CEpoch {
                version: 1,
                conf_ver: 1,
            },
            peers: vec![CPeer {
                id: 3,
                store_id: 1,
                learner: false,
            }],
        },
        11,
    )
    .await
    .expect("bootstrap");
    assert!(pd.is_bootstrapped().await.expect("is_bootstrapped"));

    // The CLI against the same group.
    let t = pd_cli(&c, &["tso"]);
    assert!(t["timestamp"].as_u64().unwrap_or(0) > *all.last().unwrap_or(&0));
    let stores = pd_cli(&c, &["store", "list"]);
    assert_eq!(stores[0]["id"], 1, "{stores}");
    assert_eq!(stores[0]["address"], "127.0.0.1:7", "{stores}");
    let r = pd_cli(&c, &["region", "get", "anything"]);
    assert_eq!(r["found"], true, "{r}");
    assert_eq!(r["region"]["id"], 2, "{r}");
    let regions = pd_cli(&c, &["region", "list"]);
    assert_eq!(
        regions["regions"].as_array().map(|a| a.len()),
        Some(1),
        "{regions}"
    );
    let members = pd_cli(&c, &["member", "list"]);
    assert_eq!(
        members["members"].as_array().map(|a| a.len()),
        Some(3),
        "{members}"
    );
    assert!(members["leader_id"].as_u64().unwrap_or(0) >= 1, "{members}");

    // A majority down: `member list` still lists the nodes, and says PD has no leader (exit 4).
    c.kill(1);
    c.kill(2);
    let deadline = Instant::now() + SECS(30);
    let out = loop {
        let out = std::process::Command::new(rdb_tests::cluster::bin_dir().join("rdb-cli"))
            .args(["--pd", &c.endpoints().join(","), "member", "list"])
            .output()
            .expect("run rdb-cli");
        // Node 3 forgets the old leader once its election timeout passes.
        if !out.status.success() || Instant::now() >= deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let explained = rdb_tests::cluster::explain(&out);
    assert_eq!(out.status.code(), Some(4), "{explained}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PD has no leader"),
        "{explained}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        4,
        "the header and every node: {explained}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_clock_stepped_back_a_burst_of_timestamps_never_waits_for_the_clock() {
    let mut c = TestCluster::start_pd(1, "tso_window_ms = 3000");
    let pd = Pd::new(&c);
    assert_eq!(pd.tso(1, SECS(20)).await.error, None);
    // Restarted a minute behind: its window opens at the old limit, a minute ahead of its clock.
    c.kill(1);
    c.restart_with_env(1, &[("RDB_PD_CLOCK_SKEW_MS", "-60000")]);
    assert_eq!(pd.tso(1, SECS(20)).await.error, None, "serving again");
    let addr = c.nodes[0].client_addr.clone();

    /// Calls `Tso` with each count in turn on one connection: the ranges it got, and the
    /// slowest call. A call that would wait for the clock fails here: `connect`'s channel
    /// times calls out after 1 s.
    async fn caller(
        addr: String,
        counts: impl Iterator<Item = u32>,
    ) -> (Vec<(u64, u64)>, Duration) {
        let mut client = connect(&addr).await.expect("connect");
        let (mut got, mut slowest) = (Vec::new(), Duration::ZERO);
        for count in counts {
            let t = Instant::now();
            let r = client
                .tso(TsoRequest { count })
                .await
                .unwrap_or_else(|e| panic!("Tso(count={count}) after {:?}: {e}", t.elapsed()))
                .into_inner();
            slowest = slowest.max(t.elapsed());
            assert_eq!(r.error, None);
            assert_eq!(r.count, count);
            let first = ts(r.first.as_ref().expect("a timestamp"));
            if let Some(&(_, last)) = got.last() {
                assert!(first > last, "{first} after {last}");
            }
            got.push((first, first + u64::from(count) - 1));
        }
        (got, slowest)
    }

    // 200,000 timestamps in calls of various counts, and single ones alongside (as
    // `rdb-cli tso` asks).
    let mut left = 200_000u32;
    let bulk: Vec<u32> = [65_536u32, 1, 30_000, 65_536, 7, 50_000, 65_535, 2]
        .iter()
        .cycle()
        .map_while(|&n| {
            let n = n.min(left);
            left -= n;
            (n > 0).then_some(n)
        })
        .collect();
    let single = tokio::spawn(caller(addr.clone(), std::iter::repeat_n(1, 200)));
    let (mut all, slowest) = caller(addr, bulk.into_iter()).await;
    let (got, slowest_single) = single.await.expect("single caller");
    all.extend(got);
    assert!(
        slowest <= Duration::from_millis(50) && slowest_single <= Duration::from_millis(50),
        "a call took {slowest:?} (single timestamps: {slowest_single:?})"
    );
    all.sort_unstable();
    for w in all.windows(2) {
        assert!(w[0].1 < w[1].0, "timestamps overlap: {w:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pd_that_lost_its_data_mints_a_new_cluster_id_and_refuses_callers_of_the_old_one() {
    use rdb_client::{Error as CError, PdClient as Client};
    let mut c = TestCluster::start_pd(3, "");
    let pd = Client::new(c.endpoints()).expect("client");
    let id = pd.cluster_id().await.expect("cluster id");
    assert_ne!(id, 0);
    assert_eq!(
        pd.cluster_id().await.expect("cluster id"),
        id,
        "minted once"
    );

    // Stamped with its id, a caller is served; stamped with another, refused, not retried.
    pd.set_cluster_id(id);
    pd.alloc_ids(1)
        .await
        .expect("ids for a caller of this cluster");
    pd.timestamp()
        .await
        .expect("a timestamp for a caller of this cluster");
    let stranger = Client::new(c.endpoints()).expect("client");
    let other = id.wrapping_add(1).max(1);
    stranger.set_cluster_id(other);
    let mismatch = |r: Result<u64, CError>| match r {
        Err(CError::ClusterMismatch(m)) => m,
        other => panic!("expected a cluster mismatch: {other:?}"),
    };
    let m = mismatch(stranger.alloc_ids(1).await);
    assert!(
        m.contains(&id.to_string()) && m.contains(&other.to_string()),
        "{m}"
    );
    let t = stranger.timestamp().await.map(|t| t.as_u64());
    mismatch(t);

    // Replicated: the next leader has the same id; and it survives a full restart.
    let l = Pd::new(&c).leader_id().await;
    c.kill(l);
    assert_eq!(pd.cluster_id().await.expect("cluster id"), id);
    c.restart(l);
    for n in 1..=3 {
        c.kill(n);
    }
    for n in 1..=3 {
        c.restart(n);
    }
    assert_eq!(pd.cluster_id().await.expect("cluster id"), id);

    // Every data directory wiped: a new cluster, which refuses callers of the old one and
    // serves unstamped ones.
    for n in 1..=3 {
        c.kill(n);
        std::fs::remove_dir_all(c.data_dir(n)).expect("wipe");
    }
    for n in 1..=3 {
        c.restart(n);
    }
    let m = mismatch(pd.alloc_ids(1).await);
    assert!(m.contains(&id.to_string()), "{m}");
    let fresh = Client::new(c.endpoints()).expect("client");
    let new_id = fresh.cluster_id().await.expect("cluster id");
    assert_ne!(new_id, id);
    assert!(m.contains(&new_id.to_string()), "{m}");
    fresh
        .alloc_ids(1)
        .await
        .expect("an unstamped caller is served");
}

#[tokio::test]
async fn a_store_moves_only_with_its_token_and_only_ids_pd_gave_are_stores() {
    use rdb_client::pd::Store as CStore;
    use rdb_client::{Error as CError, PdClient as Client};
    let c = TestCluster::start_pd(1, "");
    let pd = Client::new(c.endpoints()).expect("client");
    let id = pd.alloc_ids(1).await.expect("id");
    let store = |address: &str| CStore {
        id,
        address: address.into(),
        ..Default::default()
    };
    pd.put_store(store("127.0.0.1:1"), 7)
        .await
        .expect("register");
    pd.put_store(store("127.0.0.1:2"), 7)
        .await
        .expect("the store itself moves");
    for token in [8, 0] {
        match pd.put_store(store("127.0.0.1:66"), token).await {
            Err(CError::InvalidArgument(m)) => {
                assert!(m.contains(&format!("store {id}")), "{m}")
            }
            other => panic!("another token moved store {id}: {other:?}"),
        }
    }
    let st = pd.get_store(id).await.expect("get").expect("a store");
    assert_eq!(st.address, "127.0.0.1:2");
    let never = CStore {
        id: id + 1000,
        address: "127.0.0.1:3".into(),
        ..Default::default()
    };
    match pd.put_store(never, 9).await {
        Err(CError::InvalidArgument(m)) => assert!(m.contains("never handed out"), "{m}"),
        other => panic!("a store id PD never gave was taken: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scan_over_regions_larger_than_a_grpc_message_comes_back_whole() {
    use rdb_client::pd::{
        Peer as CPeer, Region as CRegion, RegionEpoch as CEpoch, Store as CStore,
    };
    let c = TestCluster::start_pd(1, "");
    let pd = rdb_client::PdClient::new(c.endpoints()).expect("client");
    let store = pd.alloc_ids(1).await.expect("id");
    pd.put_store(
        CStore {
            id: store,
            address: "127.0.0.1:7".into(),
            ..Default::default()
        },
        7,
    )
    .await
    .expect("store");
    // 640 regions bounded by 4,000-byte keys: about 5 MB, past the 4 MiB a gRPC client
    // decodes in one message.
    const N: u64 = 640;
    fn bound(i: u64) -> Vec<u8> {
        let mut k = vec![b'k'; 4000];
        k[..8].copy_from_slice(&i.to_be_bytes());
        k
    }
    fn region(i: u64, store: u64) -> CRegion {
        CRegion {
            id: 10_000 + i,
            start_key: if i == 0 { vec![] } else { bound(i) },
            end_key: if i + 1 == N { vec![] } else { bound(i + 1) },
            epoch: CEpoch {
                version: 1,
                conf_ver: 1,
            },
            peers: vec![CPeer {
                id: 20_000 + i,
                store_id: store,
                learner: false,
            }],
        }
    }
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let pd = pd.clone();
            tokio::spawn(async move {
                for i in (t..N).step_by(8) {
                    let r = region(i, store);
                    let leader = r.peers[0];
                    pd.region_heartbeat(r, leader, 0, 0)
                        .await
                        .expect("heartbeat");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let all = pd.scan_regions("", "", 0).await.expect("scan");
    assert_eq!(
        all.iter().map(|r| r.region.id).collect::<Vec<_>>(),
        (0..N).map(|i| 10_000 + i).collect::<Vec<_>>()
    );
    let some = pd
        .scan_regions(bound(100), bound(600), 450)
        .await
        .expect("scan");
    assert_eq!(some.len(), 450);
    assert_eq!(some[0].region.id, 10_100);
}
