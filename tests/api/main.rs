//! Integration tests: the real server on port 0 with a fresh database per
//! test, each test run once on SQLite and once on PostgreSQL.

mod helpers;

mod abuse;
mod access_matrix;
mod audit;
mod auth;
mod bad_input;
mod conformance;
mod cylinders;
mod deploy_check;
mod meta;
mod redis_limits;
mod replay;
mod scans;
mod server_limits;
mod users;
