//! Pulse's engine: the in-memory state that answers "who is on my site right now" in
//! microseconds. Pure data structures: no IO, no threads of its own, no clock reads — every
//! time-dependent call takes `now` or a timestamp from the caller.
//!
//! # Layout
//! - `event`: `Event`, `Touch`, `WebsiteId`, `VisitorId`, `Timestamp` and the small enums of a row.
//! - `identity`: `Salt`, `SaltSchedule`, `visitor_id()` — cookie-less ids and the midnight carry.
//! - `limits`: `EngineLimits`, every bound and default in one place.
//! - `ring`: `EventRing`, recent events that readers copy without blocking the writer.
//! - `window`: `VisitorWindow`, the exact sliding set of active visitors.
//! - `approx`: `SlidingHll`, the approximate count used when the exact set does not fit.
//! - `visitors`: `VisitorCount`, exact or approximate, switching with the memory budget.
//! - `budget`: `MemoryBudget`, the bytes visitor counts may hold together.
//! - `tally`: `EventTally`, the exact sliding count of events.
//! - `export`: `WebsiteExport` and its parts, a website's state as plain data (checkpoints).
//! - `breakdown`: `ClassBreakdown` and `Breakdown`, the ranked lists and minute series of a
//!   class, exact or estimated under the budget.
//! - `website`: `WebsiteState`, one website's rings and windows behind one writer lock.
//! - `engine`: `Engine`, the websites and the `ingest` / `touch` / `realtime` calls.
//! - `error`: `EngineError`.

#![deny(missing_docs)]

mod approx;
mod breakdown;
mod budget;
mod engine;
mod error;
mod event;
mod export;
mod identity;
mod limits;
mod ring;
mod tally;
mod visitors;
mod website;
mod window;

pub use approx::SlidingHll;
pub use breakdown::{
    Breakdown, BreakdownList, BreakdownRow, MinutePoint, OTHER_VALUE, SERIES_MINUTES,
};
pub use budget::MemoryBudget;
pub use engine::Engine;
pub use error::EngineError;
pub use event::{
    Browser, CountryCode, DeviceType, Event, EventKind, Timestamp, Touch, VisitorId, WebsiteId,
};
pub use export::{
    ApproximateExport, BreakdownEventExport, BreakdownExport, BreakdownShadowExport,
    BreakdownVisitorExport, ClassExport, EstimateMinuteExport, EstimatedBreakdownExport,
    ExactBreakdownExport, HllExport, RecentExport, RingExport, RingSlot, ShadowExport, TallyExport,
    TextValuesExport, VisitorCountExport, WebsiteCounts, WebsiteExport, WindowExport,
};
pub use identity::{
    client_visitor_id, visitor_id, DailySalt, Identity, Salt, SaltSchedule, CLIENT_ID_DOMAIN,
};
pub use limits::EngineLimits;
pub use ring::{EventRing, RecentEvent};
pub use tally::EventTally;
pub use visitors::VisitorCount;
pub use website::{Ingested, Realtime, Touched, WebsiteState};
pub use window::{Recorded, VisitorWindow};
