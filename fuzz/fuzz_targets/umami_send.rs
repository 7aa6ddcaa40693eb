//! Fuzz target `umami_send`: arbitrary bodies through `parse_send`, the whole parser and
//! validator of Umami's `/api/send`. It must never panic; an accepted send satisfies the
//! documented limits, and a refusal is one of the documented error codes with a 4xx status.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pulse_engine::{EventKind, WebsiteId};
use pulse_server::routes::collect::fields::MAX_CLIENT_ID_CHARS;
use pulse_server::routes::collect::{MAX_EVENT_NAME_CHARS, MAX_URL_BYTES};
use pulse_server::routes::umami::{parse_send, UmamiAction};

fuzz_target!(|body: &[u8]| {
    if body.len() > 100 * 1024 {
        return;
    }
    match parse_send(body) {
        Ok(send) => {
            assert!(WebsiteId::new(send.website.as_str()).is_ok());
            assert!(send
                .visitor_id
                .as_ref()
                .is_none_or(|id| id.chars().count() <= MAX_CLIENT_ID_CHARS
                    && !id.chars().any(char::is_control)));
            if let UmamiAction::Record { kind, target } = &send.action {
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
