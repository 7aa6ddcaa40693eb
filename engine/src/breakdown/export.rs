//! Checkpoints of a `ClassBreakdown`: `export` copies it out as plain data
//! (`crate::export::BreakdownExport`), `import` rebuilds one that answers, and takes every later
//! event, as the original would. Import checks every value it relies on, so a bad export is an
//! `EngineError::InvalidExport`, never a panic; the texts' reference counts are not written but
//! counted again from the events that hold them.
//!
//! Value ids are written as they are, with the browser and device names in id order, so the
//! export describes its own codes and nothing depends on the declaration order of an enum
//! (`values::CodeMap` translates them back). This module does not write files; the `snapshot`
//! crate does.

use super::estimate::EstimatedBreakdown;
use super::exact::ExactBreakdown;
use super::values::{browser_names, device_names, CodeMap, EventValues, ValueTable};
use super::{ClassBreakdown, Mode, Shadow};
use crate::error::EngineError;
use crate::export::{
    BreakdownExport, BreakdownShadowExport, EstimatedBreakdownExport, ExactBreakdownExport,
};

impl ClassBreakdown {
    /// The breakdown as plain data.
    pub fn export(&self) -> BreakdownExport {
        let (exact, estimated) = match &self.mode {
            Mode::Exact(exact) => (Some(exact.export()), None),
            Mode::Estimated {
                estimate,
                shadow,
                retry_at_ms,
            } => {
                let (minutes, events_capacity) = estimate.export();
                let shadow = shadow.as_ref().map(|s| BreakdownShadowExport {
                    exact: s.exact.export(),
                    since_ms: s.since_ms,
                });
                let estimated = EstimatedBreakdownExport {
                    minutes,
                    events_capacity,
                    shadow,
                    retry_at_ms: *retry_at_ms,
                };
                (None, Some(estimated))
            }
        };
        BreakdownExport {
            clock_ms: self.clock_ms,
            cutoff_ms: self.cutoff_ms,
            browser_names: browser_names(),
            device_names: device_names(),
            texts: self.values.export(),
            exact,
            estimated,
        }
    }

    /// Rebuilds a breakdown over `window_secs` holding at most `values_per_list` texts per list
    /// from `export`, or says which value is out of place.
    pub fn import(
        window_secs: u32,
        values_per_list: usize,
        export: BreakdownExport,
    ) -> Result<Self, EngineError> {
        let invalid = EngineError::InvalidExport;
        let mut class = Self::new(window_secs, values_per_list);
        if export.cutoff_ms != export.clock_ms.saturating_sub(class.window_ms) {
            return Err(invalid(
                "breakdown cutoff is not one window before its clock",
            ));
        }
        class.clock_ms = export.clock_ms;
        class.cutoff_ms = export.cutoff_ms;
        let map = CodeMap::new(
            &export.browser_names,
            &export.device_names,
            export.texts.slots.len(),
        )?;
        let mut refs = vec![0_u32; export.texts.slots.len()];
        let events = |exact: &ExactBreakdownExport, refs: &mut [u32]| {
            let mut previous_ms = i64::MIN;
            let mut all = Vec::with_capacity(exact.events.len());
            for event in &exact.events {
                if event.ts_ms < previous_ms
                    || event.ts_ms <= export.cutoff_ms
                    || event.ts_ms > export.clock_ms
                {
                    return Err(invalid(
                        "breakdown event out of order or outside the window",
                    ));
                }
                previous_ms = event.ts_ms;
                let values = map.event_values(event.values, event.pageview)?;
                for id in values.iter() {
                    ValueTable::count_ref(refs, id, 1)?;
                }
                all.push(values);
            }
            Ok(all)
        };
        let held_by = |table: &ValueTable, values: &[EventValues]| {
            if values.iter().all(|v| table.holds(v)) {
                Ok(())
            } else {
                Err(invalid("breakdown event value in the wrong list"))
            }
        };
        class.mode = match (export.exact, export.estimated) {
            (Some(exact), None) => {
                let values = events(&exact, &mut refs)?;
                class.values = ValueTable::import(values_per_list, export.texts, &refs)?;
                held_by(&class.values, &values)?;
                Mode::Exact(ExactBreakdown::import(&exact, values, export.clock_ms)?)
            }
            (None, Some(estimated)) => {
                let EstimatedBreakdownExport {
                    mut minutes,
                    events_capacity,
                    shadow,
                    retry_at_ms,
                } = estimated;
                for minute in &mut minutes {
                    for (code, events) in &mut minute.values {
                        *code = map.value_id(*code)?;
                        ValueTable::count_ref(&mut refs, *code, *events)?;
                    }
                }
                let shadow_values = match &shadow {
                    Some(s) => Some(events(&s.exact, &mut refs)?),
                    None => None,
                };
                class.values = ValueTable::import(values_per_list, export.texts, &refs)?;
                let estimate =
                    EstimatedBreakdown::import(minutes, events_capacity, export.clock_ms)?;
                let shadow = match (shadow, shadow_values) {
                    (Some(s), Some(values)) => {
                        held_by(&class.values, &values)?;
                        Some(Shadow {
                            exact: ExactBreakdown::import(&s.exact, values, export.clock_ms)?,
                            since_ms: s.since_ms,
                        })
                    }
                    _ => None,
                };
                Mode::Estimated {
                    estimate,
                    shadow,
                    retry_at_ms,
                }
            }
            _ => return Err(invalid("breakdown neither exact nor estimated, or both")),
        };
        Ok(class)
    }
}
