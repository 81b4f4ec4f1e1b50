//! gRPC adapters: decode, validate, hand a typed message to the node task, encode the answer.

pub mod backup;
mod batch;
pub mod kv;
pub mod members;
pub mod peer;
pub mod stamps;
