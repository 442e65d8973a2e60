//! The integration suite: one binary that drives the real router in process (and, in `process`,
//! the real `gatehouse` binary on a loopback socket). One module per RFC or feature; what they
//! share is in `support`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

mod account;
mod admin;
mod api_tokens;
mod browser;
mod cimd;
mod config;
mod credentials;
mod discovery;
mod doctor;
mod edge;
mod errors;
mod floods;
mod gateway;
mod health;
mod identity;
mod instances;
mod key_rotation;
mod keys;
mod mcp;
mod mcp_server;
mod mcp_sessions;
mod metrics;
mod pg_statements;
mod process;
mod readme;
mod register;
mod setup;
mod shared_egress;
mod signin;
mod storage;
mod token;
