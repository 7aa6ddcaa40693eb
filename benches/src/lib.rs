//! Shared fixtures for Pulse's benches: building realistic events and engines of a given size.
//!
//! # Layout
//! - this file: `fixture_event`, `filled_engine`.
