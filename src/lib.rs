//! cyltrack tracks LPG gas cylinders and catches counterfeit and cloned
//! labels. The binary's `main` only parses the command line; everything
//! else lives in this library so that tests can start the real server.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod demo;
pub mod deploy_check;
pub mod domain;
pub mod http;
pub mod ratelimit;
pub mod server;
pub mod storage;
pub mod telemetry;
