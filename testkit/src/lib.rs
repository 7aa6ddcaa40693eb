//! Pulse's one test kit: the pieces every test, bench and fuzz target of the workspace shares,
//! so each exists once. It is a dev-only crate (`publish = false`): the server's, engine's and
//! snapshot's tests take it as a dev-dependency, the load generator and the fuzz targets as a
//! dependency. Nothing in the shipped binary depends on it.
//!
//! - `server`: the process harness — start the real `pulse` binary on `127.0.0.1:0`, wait for
//!   `listening on`, talk to it, SIGTERM/SIGKILL it, restart it on the same data directory.
//! - `http`: the one HTTP/1.1 client (keep-alive connections for load, a request builder for
//!   tests) and the raw-bytes exchange for malformed requests.
//! - `metrics`: the one parser of `/metrics` (classic Prometheus and OpenMetrics text).
//! - `procfs`: the one reader of `/proc` (resident memory, CPU time).
//! - `nats`: the `nats-server` binary (found, or installed once into the target directory) and
//!   a JetStream cluster of real `nats-server` processes on loopback for cluster tests.
//! - `model`: the engine's reference model and the runner comparing the two.
//! - `fixtures`: User-Agent strings, the GeoIP test database, event bodies, answer readers,
//!   checks and `eventually`.
//!
//! It does not know where the `pulse` binary is (only the server's tests do, through
//! `CARGO_BIN_EXE_pulse`), and it asserts nothing about Pulse's behaviour on its own.

pub mod fixtures;
pub mod http;
pub mod metrics;
pub mod model;
pub mod nats;
pub mod procfs;
pub mod server;
