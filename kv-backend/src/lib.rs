//! replikv's kv-backend: a small HTTP service that holds NGINX Plus keyval
//! zones durably (redb, fsync on commit) and serves the NGINX Plus API
//! (versions 4 to 9) to the replikv filter in front of it.
//!
//! # REST endpoints
//!
//! - `GET /api/` and `/api`: supported versions, `[4,5,6,7,8,9]`.
//! - `GET /api/{v}/http/keyvals/` (or without the slash): every http zone,
//!   `{"zone":{"k":"v"}}`, empty zones as `{}`.
//! - `GET /api/{v}/http/keyvals/{zone}[?key=K]`: a zone, or one key of it.
//! - `POST /api/{v}/http/keyvals/{zone}`: add pairs (201; 409 if a key exists;
//!   several pairs only into an empty zone).
//! - `PATCH /api/{v}/http/keyvals/{zone}`: change one pair, `null` deletes it (204).
//! - `DELETE /api/{v}/http/keyvals/{zone}`: empty the zone (204).
//! - The same under `/api/{v}/stream/keyvals/` for stream zones (`--zone stream:NAME:SIZE`).
//! - The same API read-only under `/ro/` (`--read-only-prefix`): writes are 405.
//! - `GET /replikv/status`: history id, seq, replication log and zone counts.
//! - `GET /replikv/state/{http|stream}/{zone}`: the zone as an NGINX keyval state file.
//! - `GET /replikv/log?after=N[&limit=M]`, `GET /replikv/snapshot`: catch-up
//!   sources; `POST /replikv/apply`, `PUT /replikv/snapshot`: catch-up on a
//!   replica (with the shadow-write headers).
//!
//! Successful writes carry `x-replikv-history`, `x-replikv-seq` and
//! `x-replikv-applied-at`; a write with `x-replication-seq` is a shadow write
//! from the primary (docs/protocol.md). Errors use the NGINX error body.
//!
//! # Layout
//!
//! - [`config`]: command line, zone specs, sizes and durations.
//! - [`zone`]: zone identity and config, entries, key validation, size accounting, effects.
//! - [`request`]: pure decoding of bodies and the `key` argument.
//! - [`apply`]: write operations and the rules that turn them into effects.
//! - [`replication`]: history id, shadow-write headers and apply rule, log records.
//! - [`catchup`]: the catch-up endpoints (log, apply, snapshot).
//! - [`state`]: NGINX keyval `state=` files (export endpoint, parsing for import).
//! - [`tool`]: the `kv-backend export` and `kv-backend import` subcommands.
//! - [`store`]: the redb tables, loading at startup, the [`Store`] handle and its in-memory view.
//! - [`writer`]: the single writer thread with group commit.
//! - [`api`]: the HTTP handlers.
//! - [`error`]: the one error type and its NGINX JSON body.
//! - [`server`]: [`app`] (router for in-process tests) and [`run`] (serve a bound listener).

pub mod api;
pub mod apply;
pub mod catchup;
pub mod config;
pub mod error;
pub mod replication;
pub mod request;
pub mod server;
pub mod state;
pub mod store;
pub mod tool;
pub mod writer;
pub mod zone;

pub use config::{Cli, Config};
pub use error::{Error, Result};
pub use server::{app, run, AppState};
pub use store::Store;
