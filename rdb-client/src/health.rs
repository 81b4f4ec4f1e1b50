//! The standard gRPC health check (`grpc.health.v1.Health`) of nodes and stores, as
//! `etcdctl endpoint health` shows it: whether each endpoint answers and says it serves.

use std::time::{Duration, Instant};

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::{channel_lazy, Client, Error, Result};

/// One endpoint's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointHealth {
    /// The endpoint asked.
    pub endpoint: String,
    /// Whether it answered SERVING (a node: it knows a leader and keeps up with its log; a
    /// store: every region it hosts does).
    pub healthy: bool,
    /// How long the check took.
    pub took: Duration,
    /// Why it is not healthy: no answer (with the cause), or the status it gave.
    pub error: Option<String>,
}

impl Client {
    /// The health of `endpoint`, asked once within the client's attempt timeout (at most 3 s).
    pub async fn health_of(&self, endpoint: &str) -> EndpointHealth {
        let started = Instant::now();
        let answer = self.ask_health(endpoint).await;
        let took = started.elapsed();
        let (healthy, error) = match answer {
            Ok(ServingStatus::Serving) => (true, None),
            Ok(ServingStatus::NotServing) => (
                false,
                Some("not serving (no leader known, or far behind its log)".into()),
            ),
            Ok(other) => (false, Some(format!("status {}", other.as_str_name()))),
            Err(e) => (false, Some(e.to_string())),
        };
        EndpointHealth {
            endpoint: endpoint.to_string(),
            healthy,
            took,
            error,
        }
    }

    /// The health of every endpoint in `endpoints`, asked at once, in their order.
    pub async fn health_all(&self, endpoints: &[String]) -> Vec<EndpointHealth> {
        futures::future::join_all(endpoints.iter().map(|e| self.health_of(e))).await
    }

    async fn ask_health(&self, endpoint: &str) -> Result<ServingStatus> {
        let channel = channel_lazy(endpoint, &self.inner.opts)?;
        let timeout = self.inner.opts.attempt_timeout.min(Duration::from_secs(3));
        let mut client = HealthClient::new(channel);
        let call = client.check(HealthCheckRequest {
            service: String::new(),
        });
        let r = tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| Error::Unavailable(format!("{endpoint}: no answer in time")))?
            .map_err(|s| Error::Unavailable(format!("{endpoint}: {}", s.message())))?;
        Ok(ServingStatus::try_from(r.into_inner().status).unwrap_or(ServingStatus::Unknown))
    }
}
