//! The engine's state as plain data, for checkpoints: `WebsiteExport` and its parts, which
//! `Engine::export_website` copies out of a live website and `Engine::import_website` turns back
//! into one that answers every query, and takes every later event, exactly as the original would.
//!
//! Everything but the recent events is serde-serialisable (`WebsiteCounts`); the events stay
//! `Arc<Event>` (`RecentExport`), so the encoder that writes a checkpoint stores them in the log's
//! own explicit layout and the engine defines no on-disk codes. The types hold no enums: a mode
//! is an `Option` per alternative, so nothing an encoder writes depends on declaration order.
//! A new component of `WebsiteState` adds one field to `WebsiteCounts` (and a format version
//! to the checkpoint file). Import validates every value it relies on, so a bad export is an
//! `EngineError::InvalidExport`, never a panic.
//!
//! This module holds the types only; each component exports and imports itself in its own
//! module. Reading files and choosing what to checkpoint are the callers' jobs.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::event::Event;

/// One website's whole state: its counts (serde data) and its recent events.
#[derive(Debug, Clone, PartialEq)]
pub struct WebsiteExport {
    /// Clocks, arrival counter, visitor counts and tallies.
    pub counts: WebsiteCounts,
    /// The two rings' events.
    pub recent: RecentExport,
}

/// Everything a website holds except its recent events. A new per-website component adds its
/// field here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebsiteCounts {
    /// The website's clock: the newest timestamp or `now` it has seen (unix ms).
    pub clock_ms: i64,
    /// The arrival number the next event gets.
    pub next_arrival: u64,
    /// Human traffic.
    pub humans: ClassExport,
    /// Bot traffic.
    pub bots: ClassExport,
}

/// One class's visitor count, event tally and breakdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassExport {
    /// Active visitors, exact or approximate.
    pub visitors: VisitorCountExport,
    /// Events in the window.
    pub events: TallyExport,
    /// The breakdown's lists and series.
    pub breakdown: BreakdownExport,
}

/// A `VisitorCount`: exactly one of `exact` and `approximate` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisitorCountExport {
    /// The count's clock (unix ms).
    pub clock_ms: i64,
    /// The exact window, in exact mode.
    pub exact: Option<WindowExport>,
    /// The estimate, in approximate mode.
    pub approximate: Option<ApproximateExport>,
}

/// An approximate count: the sliding HyperLogLog, and the exact window growing in its shadow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApproximateExport {
    /// The estimate's registers.
    pub hll: HllExport,
    /// The exact window that may replace the estimate, and since when it has been recording.
    pub shadow: Option<ShadowExport>,
    /// No new shadow before this instant (unix ms).
    pub retry_at_ms: i64,
}

/// An exact window recording in the shadow of an estimate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowExport {
    /// The window.
    pub window: WindowExport,
    /// When it started recording (unix ms).
    pub since_ms: i64,
}

/// A `VisitorWindow`: its visitors and the sizes of its allocations, so the restored window
/// accounts the same bytes to the memory budget and grows at the same moments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowExport {
    /// Every visitor at or before this instant has expired (unix ms).
    pub cutoff_ms: i64,
    /// Whether the timing wheel is allocated (it is from the first visitor on).
    pub wheel_allocated: bool,
    /// Visitors the slab holds before it must grow.
    pub slab_capacity: u64,
    /// Visitors the hash table holds before it must grow.
    pub table_capacity: u64,
    /// Each active visitor's id and last timestamp (unix ms), in no particular order.
    pub visitors: Vec<(u64, i64)>,
}

/// A `SlidingHll`'s registers and clocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HllExport {
    /// Register-index bits.
    pub precision: u32,
    /// The clock (unix ms).
    pub clock_ms: i64,
    /// The clock in ticks.
    pub clock_tick: i64,
    /// The newest tick wholly at or before the cutoff.
    pub dead_tick: i64,
    /// Four 16-bit entries per register (10 bits of tick, 6 of rank).
    pub slots: Vec<u16>,
    /// Per block of 64 registers, the stored tick of its oldest first entry.
    pub oldest: Vec<u16>,
}

/// An `EventTally`'s runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TallyExport {
    /// Events at or before this instant have left the count (unix ms).
    pub cutoff_ms: i64,
    /// The width of a run's bucket, in ms.
    pub granularity_ms: i64,
    /// Runs the deque holds before it must grow.
    pub capacity: u64,
    /// `(newest timestamp in the bucket, events)`, oldest first.
    pub runs: Vec<(i64, u32)>,
}

/// Both rings' events.
#[derive(Debug, Clone, PartialEq)]
pub struct RecentExport {
    /// The human ring.
    pub humans: RingExport,
    /// The bot ring.
    pub bots: RingExport,
}

/// One `EventRing`: the events it holds, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct RingExport {
    /// The largest timestamp ever pushed (unix ms; `i64::MIN` for none).
    pub max_ts: i64,
    /// The events held, oldest position first.
    pub slots: Vec<RingSlot>,
}

/// One event of a ring.
#[derive(Debug, Clone, PartialEq)]
pub struct RingSlot {
    /// Its arrival number within the website.
    pub arrival: u64,
    /// The largest timestamp pushed up to and including it (unix ms).
    pub bound_ts: i64,
    /// The event.
    pub event: Arc<Event>,
}

/// A `ClassBreakdown`: exactly one of `exact` and `estimated` is set.
///
/// Values are written as codes in the layout this export describes itself, never in the order
/// of the engine's enums: browsers `0..B` (positions in `browser_names`), devices `B..B+D`
/// (positions in `device_names`), countries `B+D..B+D+676` (`26 × first letter + second
/// letter`, `A` = 0), then the three `(other)` values of pages, custom events and referrers,
/// then text slot `i` of `texts` at `B+D+679+i`. `u32::MAX` means "no value".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakdownExport {
    /// The breakdown's clock (unix ms).
    pub clock_ms: i64,
    /// Events at or before this instant have left the breakdown (unix ms).
    pub cutoff_ms: i64,
    /// Browser names, in the order of their codes.
    pub browser_names: Vec<String>,
    /// Device names, in the order of their codes.
    pub device_names: Vec<String>,
    /// The interned texts.
    pub texts: TextValuesExport,
    /// The exact state, in exact mode.
    pub exact: Option<ExactBreakdownExport>,
    /// The estimate, in estimated mode.
    pub estimated: Option<EstimatedBreakdownExport>,
}

/// The interned texts of a breakdown (page paths, custom event names, referrer domains) with
/// their slot numbers, so the restored values keep their codes. Reference counts are not
/// written: import counts the events that hold each text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextValuesExport {
    /// Per slot, in slot order: `(list, text)`, list 0 pages, 1 custom events, 2 referrers;
    /// `None` for a free slot.
    pub slots: Vec<Option<(u8, String)>>,
    /// Free slot numbers, ascending (the lowest is reused first, whatever the order here).
    pub free: Vec<u32>,
    /// Slots the slot vector holds before it must grow.
    pub slots_capacity: u64,
    /// Texts the lookup table holds before it must grow.
    pub table_capacity: u64,
    /// Entries the free list holds before it must grow.
    pub free_capacity: u64,
}

/// An exact breakdown: its events (from which the per-visitor pairs and the per-value counts
/// are rebuilt), the minutes each visitor was seen in, the series, and the sizes of its
/// allocations, so the restored state accounts the same bytes and grows at the same moments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExactBreakdownExport {
    /// The events, oldest first.
    pub events: Vec<BreakdownEventExport>,
    /// The active visitors, by slot.
    pub visitors: Vec<BreakdownVisitorExport>,
    /// Slots in use or free: the active visitors' and `free_slots`.
    pub visitor_slots: u64,
    /// Free visitor slots, the next to be reused last.
    pub free_slots: Vec<u32>,
    /// The series slots: `(minute, distinct visitors, pageviews)`, slot `minute mod 32`.
    pub series: Vec<(i64, u32, u32)>,
    /// Capacities: event queue, visitor nodes, free-node list, visitor table, value counts,
    /// spilled-pair table.
    pub capacities: [u64; 6],
}

/// An active visitor of an exact breakdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakdownVisitorExport {
    /// Its id.
    pub id: u64,
    /// Its slot.
    pub slot: u32,
    /// The newest minute it was seen in (minutes since the epoch).
    pub newest_minute: i64,
    /// Bit `d` set: it was seen in minute `newest_minute - d`.
    pub minutes: u64,
}

/// One event of an exact breakdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakdownEventExport {
    /// Its timestamp (unix ms).
    pub ts_ms: i64,
    /// Its visitor (after any midnight carry-over).
    pub visitor: u64,
    /// Value codes (see `BreakdownExport`): target, referrer, browser, device, country.
    pub values: [u32; 5],
    /// Whether it is a pageview (otherwise a custom event).
    pub pageview: bool,
}

/// An estimated breakdown, and the exact state growing in its shadow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EstimatedBreakdownExport {
    /// The 32 minute slots, in slot order.
    pub minutes: Vec<EstimateMinuteExport>,
    /// Value counters the per-value total holds before it must grow.
    pub events_capacity: u64,
    /// The exact state that may replace the estimate.
    pub shadow: Option<BreakdownShadowExport>,
    /// No new shadow before this instant (unix ms).
    pub retry_at_ms: i64,
}

/// One minute of an estimated breakdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EstimateMinuteExport {
    /// Minutes since the epoch; `i64::MIN` for an empty slot.
    pub minute: i64,
    /// Events in it.
    pub events: u32,
    /// Pageviews in it.
    pub pageviews: u32,
    /// The visitor sketch's 256 registers.
    pub registers: Vec<u8>,
    /// `(value code, events)`, by code.
    pub values: Vec<(u32, u32)>,
    /// Values its table holds before it must grow.
    pub values_capacity: u64,
}

/// An exact breakdown recording in the shadow of an estimate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakdownShadowExport {
    /// The exact state.
    pub exact: ExactBreakdownExport,
    /// When it started recording (unix ms).
    pub since_ms: i64,
}
