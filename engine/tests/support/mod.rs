//! Shared support for the engine's integration tests.

pub mod model;
