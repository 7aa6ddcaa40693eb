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
    /// from `export`, or says which value is out of place; no container the budget governs may
    /// claim more than `limit_bytes`, the budget's limit.
    pub fn import(
        window_secs: u32,
        values_per_list: usize,
        export: BreakdownExport,
        limit_bytes: usize,
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
                Mode::Exact(ExactBreakdown::import(
                    &exact,
                    values,
                    class.window_ms,
                    export.clock_ms,
                    limit_bytes,
                )?)
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
                            exact: ExactBreakdown::import(
                                &s.exact,
                                values,
                                class.window_ms,
                                export.clock_ms,
                                limit_bytes,
                            )?,
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::breakdown::{Breakdown, Gathered};
    use crate::budget::MemoryBudget;
    use crate::event::{
        test_pageview, Browser, CountryCode, DeviceType, Event, EventKind, VisitorId,
    };

    const T0: i64 = 1_772_532_000_000;

    fn event(ts: i64, visitor: u64, target: &str, kind: EventKind) -> Event {
        Event {
            kind,
            referrer_domain: (visitor % 2 == 0).then(|| Arc::from("r.example")),
            browser: Browser::Firefox,
            device: DeviceType::Mobile,
            country: CountryCode::new("se"),
            ..test_pageview("s", visitor, ts, target)
        }
    }

    /// A class with pageviews and custom events of 20 visitors over five minutes, some late,
    /// and a midnight-style carry-over; two texts per list, so the rest count as `(other)`.
    fn filled() -> ClassBreakdown {
        let mut class = ClassBreakdown::new(1800, 2);
        let budget = MemoryBudget::new(usize::MAX);
        for i in 0..200_i64 {
            let ts = T0 + i * 1_500 - if i % 7 == 0 { 40_000 } else { 0 };
            let kind = if i % 5 == 0 {
                EventKind::Custom
            } else {
                EventKind::Pageview
            };
            let carried = (i == 150).then_some(VisitorId(99));
            let visitor = (i % 20) as u64;
            class.record(
                &event(ts, visitor, &format!("/p/{}", i % 4), kind),
                carried,
                &budget,
            );
        }
        class
    }

    fn answer(class: &ClassBreakdown) -> Breakdown {
        let now = class.clock_ms;
        let mut gathered = Gathered::new(now);
        class.gather(20, &mut gathered);
        gathered.rank(now, 100)
    }

    fn round_trip(class: &ClassBreakdown) -> ClassBreakdown {
        ClassBreakdown::import(1800, 2, class.export(), usize::MAX).unwrap()
    }

    #[test]
    fn an_imported_breakdown_answers_and_holds_as_the_exported_one() {
        let mut class = filled();
        let pages = answer(&class).lists[0].clone();
        assert!(
            pages.iter().any(|r| &*r.value == crate::OTHER_VALUE),
            "{pages:?}"
        );
        for _ in 0..2 {
            let restored = round_trip(&class);
            assert_eq!(answer(&restored), answer(&class));
            assert_eq!(restored.memory_bytes(), class.memory_bytes());
            assert_eq!(restored.export(), class.export());
            assert_eq!(restored.is_approximate(), class.is_approximate());
            class.switch_to_estimate();
        }
        assert!(class.is_approximate());
    }

    /// Every damaged export is refused with `InvalidExport`, never a panic.
    #[test]
    fn a_damaged_export_is_refused() {
        let exact = filled().export();
        let mut estimated_class = filled();
        estimated_class.switch_to_estimate();
        let estimated = estimated_class.export();
        type Spoil = fn(&mut BreakdownExport);
        let spoils: [(&str, Spoil); 13] = [
            ("unknown browser", |e| {
                e.browser_names[0] = "Netscape".into()
            }),
            ("cutoff off the clock", |e| e.cutoff_ms += 1),
            ("both modes", |e| e.estimated = filled_estimate()),
            ("no mode", |e| e.exact = None),
            ("code out of range", |e| {
                exact_of(e).events[0].values[0] = 1 << 30
            }),
            ("browser where a page goes", |e| {
                exact_of(e).events[0].values[0] = 0;
            }),
            ("event after the clock", |e| {
                let clock = e.clock_ms;
                exact_of(e).events.last_mut().unwrap().ts_ms = clock + 1;
            }),
            ("events out of order", |e| exact_of(e).events.swap(0, 50)),
            ("held text freed", |e| e.texts.slots[0] = None),
            ("visitor slot twice", |e| {
                let exact = exact_of(e);
                exact.visitors[1].slot = exact.visitors[0].slot;
            }),
            ("visitor minutes missing", |e| {
                exact_of(e).visitors[0].minutes = 0
            }),
            ("series slot out of place", |e| exact_of(e).series[0].0 = 5),
            ("series under its visitors", |e| {
                exact_of(e).series.iter_mut().for_each(|s| s.1 = 0);
            }),
        ];
        for (what, spoil) in spoils {
            let mut export = exact.clone();
            spoil(&mut export);
            assert!(
                matches!(
                    ClassBreakdown::import(1800, 2, export, usize::MAX),
                    Err(EngineError::InvalidExport(_))
                ),
                "{what}"
            );
        }
        let estimate_spoils: [(&str, Spoil); 4] = [
            ("sketch of the wrong size", |e| {
                minutes_of(e)
                    .iter_mut()
                    .for_each(|m| m.registers.truncate(255));
            }),
            ("minute out of place", |e| {
                let minutes = minutes_of(e);
                let at = minutes.iter().position(|m| m.minute != i64::MIN).unwrap();
                minutes[at].minute += 1;
            }),
            ("value listed twice", |e| {
                let minute = minutes_of(e)
                    .iter_mut()
                    .find(|m| !m.values.is_empty())
                    .unwrap();
                let first = minute.values[0];
                minute.values.push(first);
            }),
            ("text held by nothing", |e| {
                e.texts.slots.push(Some((0, "/extra".into())));
            }),
        ];
        for (what, spoil) in estimate_spoils {
            let mut export = estimated.clone();
            spoil(&mut export);
            assert!(
                matches!(
                    ClassBreakdown::import(1800, 2, export, usize::MAX),
                    Err(EngineError::InvalidExport(_))
                ),
                "{what}"
            );
        }
        assert!(
            matches!(
                ClassBreakdown::import(1800, 1, estimated.clone(), usize::MAX),
                Err(EngineError::InvalidExport("breakdown list over its cap"))
            ),
            "made under a larger cap"
        );
        assert!(ClassBreakdown::import(1800, 2, estimated, usize::MAX).is_ok());
    }

    fn filled_estimate() -> Option<EstimatedBreakdownExport> {
        let mut class = filled();
        class.switch_to_estimate();
        class.export().estimated
    }

    fn exact_of(export: &mut BreakdownExport) -> &mut ExactBreakdownExport {
        export.exact.as_mut().unwrap()
    }

    fn minutes_of(export: &mut BreakdownExport) -> &mut Vec<crate::export::EstimateMinuteExport> {
        &mut export.estimated.as_mut().unwrap().minutes
    }
}
