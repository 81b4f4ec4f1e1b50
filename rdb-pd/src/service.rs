//! The `Pd` gRPC service: an adapter from requests to the oracle, Raft proposals and reads of
//! PD's applied state after a read barrier. Errors travel as data (`Error` in every response).
//!
//! Every request is first admitted: one stamped with a cluster id (metadata
//! [`CLUSTER_ID_METADATA`]) is served only if that is this PD's cluster id. The id is minted on
//! first need (the first `GetClusterId` or stamped request that finds none after a read
//! barrier) rather than when a node first leads: it then needs no hook into leadership changes,
//! and a leader that never gets asked never writes it. Once applied it never changes, so a node
//! that holds one checks against it without a barrier.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use prost::Message as _;
use rdb_proto::pd::pd_command::Op;
use rdb_proto::pd::pd_server::Pd;
use rdb_proto::pd::*;
use rdb_server::config::ClusterConfig;
use rdb_server::members::SharedDirectory;
use rdb_server::router::{Mailbox, RequestError};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::config::PdSettings;
use crate::raft_calls::{propose, read_barrier};
use crate::state::{PdOutput, PdState, SCAN_PAGE_BYTES};
use crate::tso::{Tso, TsoError, TsoResult};

mod errors;
mod heartbeats;
mod members;
mod placement;

use errors::{coded, pb_error, stamp, Refusal};

/// What the leader learnt from heartbeats (kept in memory, not replicated).
struct Heartbeats {
    /// The term these records belong to; a new term starts afresh.
    term: u64,
    /// When this node started leading in `term` (stores get that long before they count Down).
    since: Option<Instant>,
    stores: HashMap<u64, Instant>,
    regions: HashMap<u64, (Option<Peer>, u64, u64)>,
    /// Each store's last reported disk: capacity, available and used bytes.
    disks: HashMap<u64, (u64, u64, u64)>,
    /// The scheduler with the operators that run (see [`crate::schedule`]); a new term
    /// starts with none.
    sched: crate::schedule::Scheduler,
    /// The store views the checkers read, as computed at that instant (recomputed at most
    /// every second, and when an operator ends).
    views: Option<(Instant, Vec<crate::schedule::StoreView>)>,
}

impl Heartbeats {
    /// The records of `term`, led by this node since `since` (None: not leading yet).
    fn new(term: u64, since: Option<Instant>) -> Heartbeats {
        Heartbeats {
            term,
            since,
            stores: HashMap::new(),
            regions: HashMap::new(),
            disks: HashMap::new(),
            sched: crate::schedule::Scheduler::new(since.unwrap_or_else(Instant::now)),
            views: None,
        }
    }
}

/// Serves the PD API for one PD node.
pub struct PdService {
    mailbox: Mailbox<PdOutput>,
    state: Arc<RwLock<PdState>>,
    tso: Tso,
    /// The group's file (or joined) configuration: its Raft cluster id and shared settings.
    config: Arc<ClusterConfig>,
    /// The group's members as this node applied them.
    members: SharedDirectory,
    store_down_after: Duration,
    /// Silent this long, a store is gone: its peers are replaced (see [`crate::schedule`]).
    max_store_down: Duration,
    /// PD's `[pd]` settings (scheduling; a joining PD node adopts them).
    settings: PdSettings,
    beats: Mutex<Heartbeats>,
    logger: slog::Logger,
}

type PdResult<T> = Result<T, RequestError>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PdService {
    /// A service over the PD node's mailbox and applied state.
    pub fn new(
        mailbox: Mailbox<PdOutput>,
        state: Arc<RwLock<PdState>>,
        config: Arc<ClusterConfig>,
        members: SharedDirectory,
        pd: &PdSettings,
        logger: slog::Logger,
    ) -> PdService {
        let tso = Tso::start(mailbox.clone(), state.clone(), pd.tso_window_ms);
        PdService {
            mailbox,
            state,
            tso,
            config,
            settings: pd.clone(),
            members,
            store_down_after: pd.store_down_after(),
            max_store_down: pd.max_store_down(),
            beats: Mutex::new(Heartbeats::new(0, None)),
            logger,
        }
    }

    fn err(&self, e: RequestError) -> Option<Error> {
        Some(pb_error(e, &self.config))
    }

    /// Sets PD's store and region gauges from what this node knows, if it `leads`; a follower
    /// knows no heartbeats, so it reports zeros (sums over PD's nodes are the leader's view).
    pub fn observe(&self, leads: bool) {
        let m = crate::metrics::metrics();
        if !leads {
            for state in ["up", "down", "tombstone", "offline"] {
                m.stores.with_label_values(&[state]).set(0);
            }
            m.regions.set(0);
            m.regions_under_replicated.set(0);
            m.regions_without_leader.set(0);
            return;
        }
        let (stores, regions, replicas) = self.read(|s| {
            (
                s.stores.values().cloned().collect::<Vec<_>>(),
                s.regions.values().cloned().collect::<Vec<_>>(),
                s.replicas as usize,
            )
        });
        let stores: Vec<Store> = stores
            .into_iter()
            .map(|st| self.with_liveness(st))
            .collect();
        let count = |state: StoreState| stores.iter().filter(|s| s.state == state as i32).count();
        m.stores
            .with_label_values(&["up"])
            .set(count(StoreState::Up) as i64);
        m.stores
            .with_label_values(&["down"])
            .set(count(StoreState::Down) as i64);
        m.stores
            .with_label_values(&["tombstone"])
            .set(count(StoreState::Tombstone) as i64);
        m.stores
            .with_label_values(&["offline"])
            .set(count(StoreState::Offline) as i64);
        let up = |id: u64| {
            stores
                .iter()
                .any(|s| s.id == id && s.state == StoreState::Up as i32)
        };
        let under = regions
            .iter()
            .filter(|r| {
                let voters = r.peers.iter().filter(|p| !p.learner).count();
                let live = r
                    .peers
                    .iter()
                    .filter(|p| !p.learner && up(p.store_id))
                    .count();
                live < replicas.max(voters)
            })
            .count();
        let b = lock(&self.beats);
        let without_leader = regions
            .iter()
            .filter(|r| b.regions.get(&r.id).is_none_or(|(l, _, _)| l.is_none()))
            .count();
        drop(b);
        m.regions.set(regions.len() as i64);
        m.regions_under_replicated.set(under as i64);
        m.regions_without_leader.set(without_leader as i64);
    }

    /// A read barrier; on a new term, the heartbeat records of the old one are dropped.
    async fn barrier(&self) -> PdResult<()> {
        let term = read_barrier(&self.mailbox).await?;
        let mut b = lock(&self.beats);
        if b.term != term {
            *b = Heartbeats::new(term, Some(Instant::now()));
        }
        Ok(())
    }

    /// This PD's cluster id, minted through the log if none is set yet (the first one applied
    /// wins, so two leaders racing or a retried proposal agree on one).
    async fn cluster_id(&self) -> PdResult<u64> {
        // Set once and never changed: an id this node applied is current.
        let known = self.read(|s| s.cluster_id);
        if known != 0 {
            return Ok(known);
        }
        self.barrier().await?;
        let known = self.read(|s| s.cluster_id);
        if known != 0 {
            return Ok(known);
        }
        let minted = loop {
            let id: u64 = rand::random();
            if id != 0 {
                break id;
            }
        };
        let cmd = PdCommand {
            op: Some(Op::InitCluster(InitCluster { cluster_id: minted })),
        };
        match propose(&self.mailbox, cmd.encode_to_vec()).await? {
            PdOutput::ClusterId(id) => Ok(id),
            other => Err(RequestError::Unavailable(format!(
                "unexpected answer to minting the cluster id: {other:?}"
            ))),
        }
    }

    /// Refuses a request stamped with a cluster id that is not this PD's.
    async fn admit(&self, meta: &MetadataMap) -> Result<(), Error> {
        let Some(expected) = stamp(meta)? else {
            return Ok(());
        };
        let own = self
            .cluster_id()
            .await
            .map_err(|e| pb_error(e, &self.config))?;
        if own == expected {
            return Ok(());
        }
        Err(coded(
            ErrorCode::ClusterMismatch,
            format!(
                "this PD belongs to cluster {own}, the request to cluster {expected} (a caller \
                 of another cluster, or a PD that lost its data)"
            ),
        ))
    }

    fn read<T>(&self, f: impl FnOnce(&PdState) -> T) -> T {
        f(&self.state.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Proposes `op`; Ok(None) when it applied, Ok(Some(error)) when PD refused it.
    async fn change(&self, op: Op) -> PdResult<(Option<Error>, PdOutput)> {
        let data = PdCommand { op: Some(op) }.encode_to_vec();
        let out = propose(&self.mailbox, data).await?;
        Ok(match out {
            PdOutput::Refused(code, message) => (Some(coded(code, message)), out_done()),
            other => (None, other),
        })
    }

    /// The store as reported: DOWN if the leader has not heard it for `store_down_after`.
    fn with_liveness(&self, mut st: Store) -> Store {
        st.region_count = self.read(|s| {
            s.regions
                .values()
                .filter(|r| r.peers.iter().any(|p| p.store_id == st.id))
                .count() as u64
        });
        let b = lock(&self.beats);
        st.leader_count = b
            .regions
            .values()
            .filter(|(leader, _, _)| leader.as_ref().is_some_and(|l| l.store_id == st.id))
            .count() as u64;
        if let Some(&(capacity, available, used)) = b.disks.get(&st.id) {
            (st.capacity_bytes, st.available_bytes, st.used_bytes) = (capacity, available, used);
        }
        if st.state == StoreState::Tombstone as i32 || st.state == StoreState::Offline as i32 {
            return st;
        }
        let last = b.stores.get(&st.id).copied().or(b.since);
        let ago = last.map_or(Duration::ZERO, |t| t.elapsed());
        st.last_heartbeat_ms_ago = b
            .stores
            .get(&st.id)
            .map_or(0, |t| t.elapsed().as_millis() as u64);
        st.state = if ago > self.store_down_after {
            StoreState::Down as i32
        } else {
            StoreState::Up as i32
        };
        st
    }

    fn region_response(&self, r: Option<Region>) -> GetRegionResponse {
        let Some(r) = r else {
            return GetRegionResponse {
                error: Some(coded(ErrorCode::NotFound, "no such region".into())),
                ..Default::default()
            };
        };
        let b = lock(&self.beats);
        let (leader, size, keys) = b.regions.get(&r.id).cloned().unwrap_or((None, 0, 0));
        GetRegionResponse {
            error: None,
            region: Some(r),
            leader,
            approximate_size: size,
            approximate_keys: keys,
        }
    }
}

fn out_done() -> PdOutput {
    PdOutput::Done
}

fn tso_response(r: TsoResult, count: u32, config: &ClusterConfig) -> TsoResponse {
    match r {
        Ok((physical, logical)) => TsoResponse {
            error: None,
            first: Some(Timestamp { physical, logical }),
            count,
        },
        Err(TsoError::Request(e)) => TsoResponse::refusal(pb_error(e, config)),
        Err(TsoError::LimitAhead(why)) => {
            TsoResponse::refusal(coded(ErrorCode::FailedPrecondition, why))
        }
    }
}

type TsoStream = Pin<Box<dyn Stream<Item = Result<TsoResponse, Status>> + Send + 'static>>;

/// Answers a refused request with its error alone.
macro_rules! admit {
    ($svc:expr, $req:expr) => {
        if let Err(e) = $svc.admit($req.metadata()).await {
            return Ok(Response::new(Refusal::refusal(e)));
        }
    };
}

#[tonic::async_trait]
impl Pd for PdService {
    async fn tso(&self, req: Request<TsoRequest>) -> Result<Response<TsoResponse>, Status> {
        admit!(self, req);
        let count = req.into_inner().count;
        let started = Instant::now();
        let r = self.tso.get(count).await;
        crate::metrics::observe_tso(started.elapsed());
        Ok(Response::new(tso_response(r, count, &self.config)))
    }

    type TsoStreamStream = TsoStream;

    async fn tso_stream(
        &self,
        req: Request<Streaming<TsoRequest>>,
    ) -> Result<Response<TsoStream>, Status> {
        if let Err(e) = self.admit(req.metadata()).await {
            // Still one answer per request, each the refusal.
            let out = req
                .into_inner()
                .map(move |r| r.map(|_| TsoResponse::refusal(e.clone())));
            return Ok(Response::new(Box::pin(out)));
        }
        let (tso, config) = (self.tso.clone(), self.config.clone());
        let out = req.into_inner().then(move |r| {
            let (tso, config) = (tso.clone(), config.clone());
            async move {
                let r = r?;
                let started = Instant::now();
                let answer = tso.get(r.count).await;
                crate::metrics::observe_tso(started.elapsed());
                Ok(tso_response(answer, r.count, &config))
            }
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn alloc_id(
        &self,
        req: Request<AllocIdRequest>,
    ) -> Result<Response<AllocIdResponse>, Status> {
        admit!(self, req);
        let r = req.into_inner();
        let count = r.count;
        let resp = match self.change(Op::AllocId(r)).await {
            Ok((None, PdOutput::Ids { first })) => AllocIdResponse {
                error: None,
                first,
                count,
            },
            Ok((Some(e), _)) => AllocIdResponse::refusal(e),
            Ok((None, other)) => AllocIdResponse {
                error: self.err(RequestError::Unavailable(format!(
                    "unexpected answer {other:?}"
                ))),
                ..Default::default()
            },
            Err(e) => AllocIdResponse {
                error: self.err(e),
                ..Default::default()
            },
        };
        Ok(Response::new(resp))
    }

    async fn bootstrap(
        &self,
        req: Request<BootstrapRequest>,
    ) -> Result<Response<BootstrapResponse>, Status> {
        admit!(self, req);
        let error = match self.change(Op::Bootstrap(req.into_inner())).await {
            Ok((e, _)) => e,
            Err(e) => self.err(e),
        };
        Ok(Response::new(BootstrapResponse { error }))
    }

    async fn bootstrap_regions(
        &self,
        req: Request<BootstrapRegionsRequest>,
    ) -> Result<Response<BootstrapResponse>, Status> {
        admit!(self, req);
        let error = match self.change(Op::BootstrapRegions(req.into_inner())).await {
            Ok((e, _)) => e,
            Err(e) => self.err(e),
        };
        Ok(Response::new(BootstrapResponse { error }))
    }

    async fn is_bootstrapped(
        &self,
        req: Request<IsBootstrappedRequest>,
    ) -> Result<Response<IsBootstrappedResponse>, Status> {
        admit!(self, req);
        let resp = match self.barrier().await {
            Ok(()) => self.read(|s| IsBootstrappedResponse {
                error: None,
                bootstrapped: s.bootstrapped,
                replicas: s.replicas,
            }),
            Err(e) => IsBootstrappedResponse::refusal(pb_error(e, &self.config)),
        };
        Ok(Response::new(resp))
    }

    async fn put_store(
        &self,
        req: Request<PutStoreRequest>,
    ) -> Result<Response<PutStoreResponse>, Status> {
        admit!(self, req);
        let r = req.into_inner();
        let Some(id) = r.store.as_ref().map(|s| s.id) else {
            return Ok(Response::new(PutStoreResponse {
                error: self.err(RequestError::InvalidArgument("a store is required".into())),
            }));
        };
        let error = match self.change(Op::RegisterStore(r)).await {
            Ok((e, _)) => e,
            Err(e) => self.err(e),
        };
        if error.is_none() {
            lock(&self.beats).stores.insert(id, Instant::now());
        }
        Ok(Response::new(PutStoreResponse { error }))
    }

    async fn get_store(
        &self,
        req: Request<GetStoreRequest>,
    ) -> Result<Response<GetStoreResponse>, Status> {
        admit!(self, req);
        let id = req.into_inner().store_id;
        let resp = match self.barrier().await {
            Ok(()) => match self.read(|s| s.stores.get(&id).cloned()) {
                Some(st) => GetStoreResponse {
                    error: None,
                    store: Some(self.with_liveness(st)),
                },
                None => GetStoreResponse {
                    error: Some(coded(ErrorCode::NotFound, format!("no store {id}"))),
                    store: None,
                },
            },
            Err(e) => GetStoreResponse {
                error: self.err(e),
                store: None,
            },
        };
        Ok(Response::new(resp))
    }

    async fn get_all_stores(
        &self,
        req: Request<GetAllStoresRequest>,
    ) -> Result<Response<GetAllStoresResponse>, Status> {
        admit!(self, req);
        let exclude = req.into_inner().exclude_tombstones;
        let resp = match self.barrier().await {
            Ok(()) => {
                let stores: Vec<Store> = self.read(|s| s.stores.values().cloned().collect());
                GetAllStoresResponse {
                    error: None,
                    stores: stores
                        .into_iter()
                        .filter(|st| !(exclude && st.state == StoreState::Tombstone as i32))
                        .map(|st| self.with_liveness(st))
                        .collect(),
                }
            }
            Err(e) => GetAllStoresResponse {
                error: self.err(e),
                stores: Vec::new(),
            },
        };
        Ok(Response::new(resp))
    }

    async fn set_store_state(
        &self,
        req: Request<SetStoreStateRequest>,
    ) -> Result<Response<SetStoreStateResponse>, Status> {
        admit!(self, req);
        let error = match self.change(Op::SetStoreState(req.into_inner())).await {
            Ok((e, _)) => e,
            Err(e) => self.err(e),
        };
        Ok(Response::new(SetStoreStateResponse { error }))
    }

    async fn store_heartbeat(
        &self,
        req: Request<StoreHeartbeatRequest>,
    ) -> Result<Response<StoreHeartbeatResponse>, Status> {
        admit!(self, req);
        Ok(Response::new(
            self.on_store_heartbeat(req.into_inner()).await,
        ))
    }

    async fn region_heartbeat(
        &self,
        req: Request<RegionHeartbeatRequest>,
    ) -> Result<Response<RegionHeartbeatResponse>, Status> {
        admit!(self, req);
        Ok(Response::new(
            self.on_region_heartbeat(req.into_inner()).await,
        ))
    }

    async fn get_region(
        &self,
        req: Request<GetRegionRequest>,
    ) -> Result<Response<GetRegionResponse>, Status> {
        admit!(self, req);
        let key = req.into_inner().key;
        let resp = match self.barrier().await {
            Ok(()) => self.region_response(self.read(|s| s.region_for(&key).cloned())),
            Err(e) => GetRegionResponse {
                error: self.err(e),
                ..Default::default()
            },
        };
        Ok(Response::new(resp))
    }

    async fn get_region_by_id(
        &self,
        req: Request<GetRegionByIdRequest>,
    ) -> Result<Response<GetRegionResponse>, Status> {
        admit!(self, req);
        let id = req.into_inner().region_id;
        let resp = match self.barrier().await {
            Ok(()) => self.region_response(self.read(|s| s.regions.get(&id).cloned())),
            Err(e) => GetRegionResponse {
                error: self.err(e),
                ..Default::default()
            },
        };
        Ok(Response::new(resp))
    }

    async fn scan_regions(
        &self,
        req: Request<ScanRegionsRequest>,
    ) -> Result<Response<ScanRegionsResponse>, Status> {
        admit!(self, req);
        let r = req.into_inner();
        let resp = match self.barrier().await {
            Ok(()) => {
                let page = self
                    .read(|s| s.scan(&r.start_key, &r.end_key, r.limit as usize, SCAN_PAGE_BYTES));
                ScanRegionsResponse {
                    error: None,
                    regions: page
                        .regions
                        .into_iter()
                        .map(|x| self.region_response(Some(x)))
                        .collect(),
                    next_start_key: page.next_start_key.unwrap_or_default(),
                }
            }
            Err(e) => ScanRegionsResponse {
                error: self.err(e),
                ..Default::default()
            },
        };
        Ok(Response::new(resp))
    }

    async fn get_members(
        &self,
        req: Request<GetMembersRequest>,
    ) -> Result<Response<GetMembersResponse>, Status> {
        admit!(self, req);
        Ok(Response::new(self.get_members_inner().await))
    }

    async fn change_members(
        &self,
        req: Request<ChangeMembersRequest>,
    ) -> Result<Response<ChangeMembersResponse>, Status> {
        admit!(self, req);
        Ok(Response::new(
            self.change_members_inner(req.into_inner()).await,
        ))
    }

    async fn get_operators(
        &self,
        req: Request<GetOperatorsRequest>,
    ) -> Result<Response<GetOperatorsResponse>, Status> {
        admit!(self, req);
        // Operators live in the leader's memory: the barrier proves this node leads.
        let resp = match self.barrier().await {
            Ok(()) => GetOperatorsResponse {
                error: None,
                operators: self.operator_infos(),
            },
            Err(e) => GetOperatorsResponse {
                error: self.err(e),
                operators: Vec::new(),
            },
        };
        Ok(Response::new(resp))
    }

    async fn get_cluster_id(
        &self,
        req: Request<GetClusterIdRequest>,
    ) -> Result<Response<GetClusterIdResponse>, Status> {
        admit!(self, req);
        let resp = match self.cluster_id().await {
            Ok(cluster_id) => GetClusterIdResponse {
                error: None,
                cluster_id,
            },
            Err(e) => GetClusterIdResponse {
                error: self.err(e),
                cluster_id: 0,
            },
        };
        Ok(Response::new(resp))
    }
}
