//! In-process tests of the HTTP interface through `app()`: the NGINX keyval
//! conformance checklist, bad input, and shadow writes. One binary, one
//! module per concern; `helpers` has the `TestApp` they all drive.

mod bad_input;
mod catchup;
mod concurrency;
mod conformance;
mod helpers;
mod replication;
