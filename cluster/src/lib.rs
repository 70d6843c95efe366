//! Starts a whole replikv cluster from real processes on one machine: a load
//! balancer Envoy, a primary node and one or more replica nodes, each node an Envoy
//! carrying the replikv filter in front of its own kv-backend.
//!
//! `make up` (the `replikv-up` binary) and the end-to-end tests both use this
//! crate, so the tests start exactly what users start.
//!
//! # Layout
//!
//! - [`binaries`]: finds the Envoy binary, the filter's `.wasm` and the kv-backend.
//! - [`topology`]: who listens where: node names, roles and ports of a cluster.
//! - [`render`]: fills the Envoy templates in `envoy/` for a topology.
//! - [`process`]: one supervised child process with its log file.
//! - [`cluster`]: starts every process in order, waits until each is ready, and
//!   stops them all.

pub mod binaries;
pub mod cluster;
pub mod process;
pub mod render;
pub mod topology;

pub use binaries::Binaries;
pub use cluster::{Cluster, ClusterOptions, Node};
pub use topology::{PortPlan, Role, Topology};

/// The workspace root, where `envoy/` and `target/` live.
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| std::path::PathBuf::from("."))
}
