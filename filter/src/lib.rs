//! replikv's proxy-wasm filter for Envoy. One build, two roles chosen by the
//! plugin configuration: on the **primary** it strips client replication
//! headers and ships every write the backend applied (2xx) to each replica,
//! signed, from the root context, with retries; on a **replica** it answers
//! client writes with a 307 to the primary, verifies the signature of shadow
//! writes before they reach the backend, and serves reads locally.
//! docs/protocol.md is the contract it implements.
//!
//! Build: `cargo build -p replikv-filter --target wasm32-wasip1 --release`.
//!
//! # Layout
//!
//! - [`config`]: the plugin configuration, parsed and validated (pure).
//! - [`decide`]: what to do with a request, from its headers (pure).
//! - [`proof`]: canonical string, HMAC-SHA256 signing and verification (pure).
//! - [`shipper`]: the per-replica ordered shadow-write queue (pure).
//! - [`error_body`]: NGINX Plus API error JSON (pure).
//! - `root`: root context; configuration, shipper, dispatch of shadow writes.
//! - `http`: HTTP context; applies decisions, buffers, captures bodies.
//! - `metrics`: the `replikv.*` stats.
//!
//! The pure modules make no host calls and are unit-tested natively with
//! `cargo test -p replikv-filter`.

// A panic traps the VM and takes a worker's filter down with it.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod acks;
pub mod catchup;
pub mod config;
pub mod decide;
pub mod error_body;
pub mod proof;
pub mod replay;
pub mod shipper;
pub mod status;

mod http;
mod metrics;
mod root;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_context_id| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::<root::Root>::default()
    });
}}
