//! Pulse's on-disk event log: append-only segment files, their writer and their replay.
//!
//! This crate is a placeholder until the durability work lands: it owns nothing yet. It will know
//! files and bytes only (std::fs, memmap2), never HTTP or configuration.
//!
//! # Layout
//! (empty until the segment format lands)
