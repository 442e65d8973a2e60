//! The integration suite: one binary that drives the real router in process (and, in `process`,

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! the real `gatehouse` binary on a loopback socket). One module per RFC or feature.

mod support;

mod browser;
mod cimd;
mod config;
mod discovery;
mod errors;
mod floods;
mod health;
mod instances;
mod key_rotation;
mod keys;
mod mcp;
pub(crate) mod mcp_server;
mod mcp_sessions;
pub mod process;
mod readme;
mod register;
mod shared_egress;
pub(crate) mod signin;
mod storage;
pub(crate) mod token;
