//! Fuzz target `plausible_event`: arbitrary bodies through `parse_event`, the whole parser and
//! validator of Plausible's `/api/event`. It must never panic; an accepted event satisfies the
//! documented limits, and a refusal is one of the documented error codes with a 4xx status.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pulse_engine::EventKind;
use pulse_server::routes::collect::{MAX_EVENT_NAME_CHARS, MAX_URL_BYTES};
use pulse_server::routes::plausible::{parse_event, PlausibleAction, MAX_DOMAINS};

fuzz_target!(|body: &[u8]| {
    // The route refuses bodies over 100 KiB before parsing; the fuzzer stays in that range.
    if body.len() > 100 * 1024 {
        return;
    }
    match parse_event(body) {
        Ok(event) => {
            assert!((1..=MAX_DOMAINS).contains(&event.domains.len()));
            assert!(event.domains.iter().all(|d| !d.is_empty()));
            if let PlausibleAction::Record { kind, target } = &event.action {
                match kind {
                    EventKind::Pageview => {
                        assert!(target.starts_with('/'), "{target:?}");
                        assert!(!target.contains(['?', '#']));
                        assert!(target.len() <= MAX_URL_BYTES);
                    }
                    EventKind::Custom => {
                        assert!(!target.is_empty());
                        assert!(target.chars().count() <= MAX_EVENT_NAME_CHARS);
                    }
                }
            }
        }
        Err(error) => {
            assert!(error.status.is_client_error());
            assert!(
                ["invalid_json", "missing_field", "invalid_field"].contains(&error.code),
                "{}",
                error.code
            );
        }
    }
});
