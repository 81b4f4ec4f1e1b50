//! Multi-node integration and fault-injection tests for rdb, against real `rdb-server`
//! processes (see [`cluster::TestCluster`]), plus the linearizability checker they use.

pub mod certs;
pub mod cluster;
pub mod fault;
pub use rdb_server::sim::linearizability;
pub mod netns;
pub mod regions;
