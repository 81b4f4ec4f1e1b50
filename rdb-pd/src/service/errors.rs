//! How the service's answers carry errors: a request error as PD's `Error` (code, cause, the
//! leader to ask), a response that is only an error, and the cluster id a request is stamped
//! with.

use rdb_proto::pd::*;
use rdb_server::config::ClusterConfig;
use rdb_server::router::RequestError;
use tonic::metadata::MetadataMap;

/// A request error as PD's `Error`: its code, its cause, and the leader to ask.
pub(super) fn pb_error(e: RequestError, config: &ClusterConfig) -> Error {
    let (code, leader) = match &e {
        RequestError::InvalidArgument(_) => (ErrorCode::InvalidArgument, None),
        RequestError::NotLeader(hint) => (
            ErrorCode::NotLeader,
            hint.as_ref().map(|h| Member {
                id: h.id,
                client_addr: h.addr.clone(),
                peer_addr: config
                    .node(h.id)
                    .map(|n| n.peer_addr.clone())
                    .unwrap_or_default(),
                ..Default::default()
            }),
        ),
        RequestError::Unavailable(_) => (ErrorCode::Unavailable, None),
        RequestError::Indeterminate(_) => (ErrorCode::Indeterminate, None),
        // PD has no regions of its own to route by, nor versioned keys.
        RequestError::KeyNotInRegion(..)
        | RequestError::EpochNotMatch(..)
        | RequestError::RegionNotFound(_)
        | RequestError::Compacted(_)
        | RequestError::FutureRevision(_) => (ErrorCode::InvalidArgument, None),
    };
    // The code names the kind; the message is the cause alone (callers prefix the kind).
    let message = match e {
        RequestError::NotLeader(Some(h)) => format!("PD node {} leads, at {}", h.id, h.addr),
        RequestError::InvalidArgument(m)
        | RequestError::Unavailable(m)
        | RequestError::Indeterminate(m) => m,
        other => other.to_string(),
    };
    Error {
        code: code as i32,
        message,
        leader,
    }
}

/// An error of this code and cause.
pub(super) fn coded(code: ErrorCode, message: String) -> Error {
    Error {
        code: code as i32,
        message,
        leader: None,
    }
}

/// A response that carries only an error (every PD response can).
pub(super) trait Refusal: Default {
    /// The response carrying `e`.
    fn refusal(e: Error) -> Self;
}

macro_rules! refusal {
    ($($t:ty),*) => {$(
        impl Refusal for $t {
            // Some responses have no field but `error`.
            #[allow(clippy::needless_update)]
            fn refusal(e: Error) -> Self {
                Self { error: Some(e), ..Default::default() }
            }
        }
    )*};
}

refusal!(
    TsoResponse,
    AllocIdResponse,
    BootstrapResponse,
    IsBootstrappedResponse,
    PutStoreResponse,
    GetStoreResponse,
    GetAllStoresResponse,
    SetStoreStateResponse,
    StoreHeartbeatResponse,
    RegionHeartbeatResponse,
    GetRegionResponse,
    ScanRegionsResponse,
    GetMembersResponse,
    GetOperatorsResponse,
    ChangeMembersResponse,
    GetClusterIdResponse
);

/// The cluster id a request is stamped with, if any.
pub(super) fn stamp(meta: &MetadataMap) -> Result<Option<u64>, Error> {
    let Some(v) = meta.get(CLUSTER_ID_METADATA) else {
        return Ok(None);
    };
    match v.to_str().ok().and_then(|v| v.parse::<u64>().ok()) {
        Some(id) if id != 0 => Ok(Some(id)),
        _ => Err(coded(
            ErrorCode::InvalidArgument,
            format!("metadata {CLUSTER_ID_METADATA} must be a non-zero decimal cluster id"),
        )),
    }
}
