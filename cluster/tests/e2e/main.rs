//! End-to-end tests: real Envoy 1.40 with the built filter, real kv-backend
//! processes, real sockets on 127.0.0.1, started exactly as `make up` starts them.
//!
//! They need the release `.wasm`, a kv-backend binary and Envoy (`make e2e`
//! builds and finds all three; see `replikv_cluster::Binaries`).

mod conformance;
mod faults;
mod forgery;
mod helpers;
mod replication;
mod runner;
