//! replikv filter (pure modules only, glue follows).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
pub mod config;
pub mod decide;
pub mod error_body;
pub mod proof;
pub mod shipper;
