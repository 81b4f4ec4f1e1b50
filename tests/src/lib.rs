//! Multi-node integration and fault-injection tests for rdb.

pub mod linearizability;
