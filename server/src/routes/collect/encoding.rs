//! How an ingest body is encoded: its `Content-Encoding` — which codings the ingest routes read
//! (`identity`, and `gzip` for the server-side senders that compress; browsers' `sendBeacon`
//! and `fetch` never do) and `gunzip`, which inflates a gzip body while holding its
//! decompressed size to the body limit, so a gzip bomb costs at most the limit in memory and
//! stops being inflated as soon as it passes it — and `strip_utf8_bom`, the one leading
//! byte-order mark every ingest parser skips.
//!
//! Pure functions of a `HeaderMap` and bytes (the fuzz targets call them); reading the bytes off
//! the connection is `crate::body`'s, parsing the JSON `schema`'s and the other formats'.

use std::io::Read;

use axum::http::{header, HeaderMap, StatusCode};
use flate2::read::MultiGzDecoder;

use crate::error::ApiError;

/// The error code of a body in a coding collect does not read.
pub const UNSUPPORTED_ENCODING: &str = "unsupported_encoding";

/// The codings collect reads, as sent in `Accept-Encoding` with a 415 (RFC 9110 §15.5.16).
pub const ACCEPTED_ENCODINGS: &str = "gzip, identity";

/// How the body on the wire is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEncoding {
    Identity,
    Gzip,
}

/// The body's coding from its `Content-Encoding` header(s): none, `identity` or one `gzip`
/// (`x-gzip` is its old alias, RFC 9110 §8.4.1.3). Anything else is refused with 415
/// `unsupported_encoding` before the body is read; that includes gzip applied twice, which no
/// real sender does and which would multiply what a small body can inflate to.
pub fn body_encoding(headers: &HeaderMap) -> Result<BodyEncoding, ApiError> {
    let mut encoding = BodyEncoding::Identity;
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let value = value
            .to_str()
            .map_err(|_| unsupported("a non-ASCII value"))?;
        for coding in value.split(',').map(str::trim) {
            if coding.is_empty() || coding.eq_ignore_ascii_case("identity") {
                continue;
            }
            let is_gzip =
                coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip");
            if !is_gzip || encoding == BodyEncoding::Gzip {
                return Err(unsupported(&format!("`{}`", value.trim())));
            }
            encoding = BodyEncoding::Gzip;
        }
    }
    Ok(encoding)
}

/// The UTF-8 byte-order mark that some encoders (.NET's `Encoding.UTF8`, Windows editors) put
/// before the JSON; RFC 8259 §8.1 lets a parser ignore it.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// `body` without one leading UTF-8 byte-order mark, if it has one. Only one, and only as the
/// very first bytes: anything else is the JSON parser's to refuse.
pub fn strip_utf8_bom(body: &[u8]) -> &[u8] {
    body.strip_prefix(UTF8_BOM).unwrap_or(body)
}

fn unsupported(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        UNSUPPORTED_ENCODING,
        format!("collect reads bodies sent as identity or gzip, not {what}"),
    )
}

/// Inflates a gzip body (one member or several, as RFC 1952 allows) into at most `max_bytes`.
/// A body that inflates to more answers 413 `payload_too_large`, found out while inflating:
/// the output buffer never grows past `max_bytes`. A body that is not gzip, or is cut short,
/// answers 400 `invalid_body`.
pub fn gunzip(compressed: &[u8], max_bytes: usize) -> Result<Vec<u8>, ApiError> {
    let mut decoder = MultiGzDecoder::new(compressed);
    // Typical JSON inflates four- to tenfold; start there and grow by doubling, capped at the limit.
    let mut inflated = Vec::with_capacity(compressed.len().saturating_mul(4).min(max_bytes));
    let mut chunk = [0u8; 8 * 1024];
    loop {
        let read = decoder.read(&mut chunk).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("the body is labelled gzip but is not a valid gzip stream: {e}"),
            )
        })?;
        if read == 0 {
            return Ok(inflated);
        }
        let needed = inflated.len() + read;
        if needed > max_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body inflates to more than {max_bytes} bytes"),
            ));
        }
        if needed > inflated.capacity() {
            let target = needed.max(inflated.capacity() * 2).min(max_bytes);
            inflated.reserve_exact(target - inflated.len());
        }
        inflated.extend_from_slice(&chunk[..read]);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use axum::http::HeaderValue;
    use flate2::write::GzEncoder;
    use flate2::Compression;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn encoding_of(values: &[&str]) -> Result<BodyEncoding, &'static str> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                header::CONTENT_ENCODING,
                HeaderValue::from_str(value).unwrap(),
            );
        }
        body_encoding(&headers).map_err(|e| e.code)
    }

    #[test]
    fn identity_and_one_gzip_are_read_and_every_other_coding_is_415() {
        use BodyEncoding::{Gzip, Identity};
        assert_eq!(encoding_of(&[]), Ok(Identity));
        for ok in [
            &["identity"][..],
            &["IDENTITY"],
            &[""],
            &["identity, identity"],
        ] {
            assert_eq!(encoding_of(ok), Ok(Identity), "{ok:?}");
        }
        for ok in [
            &["gzip"][..],
            &["GZip"],
            &[" gzip "],
            &["x-gzip"],
            &["identity, gzip"],
            &["gzip", "identity"],
        ] {
            assert_eq!(encoding_of(ok), Ok(Gzip), "{ok:?}");
        }
        for refused in [
            &["br"][..],
            &["deflate"],
            &["compress"],
            &["zstd"],
            &["gzip;q=1"],
            &["nonsense"],
            &["gzip, gzip"],
            &["gzip", "gzip"],
            &["gzip, br"],
        ] {
            assert_eq!(
                encoding_of(refused),
                Err(UNSUPPORTED_ENCODING),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn gzip_bodies_inflate_to_what_was_compressed() {
        let body = br#"{"website_id":"s","type":"pageview","url":"/"}"#;
        assert_eq!(gunzip(&gzip(body), 100), Ok(body.to_vec()));
        // Two members, as `cat a.gz b.gz` makes: both are read.
        let mut two = gzip(b"[1,");
        two.extend(gzip(b"2]"));
        assert_eq!(gunzip(&two, 100), Ok(b"[1,2]".to_vec()));
        assert_eq!(gunzip(&gzip(b""), 100), Ok(Vec::new()));
    }

    #[test]
    fn gzip_bomb_is_refused_without_buffering_past_the_limit() {
        let limit = 100 * 1024;
        let bomb = gzip(&vec![0u8; 10 * 1024 * 1024]);
        assert!(bomb.len() < limit, "the bomb must fit the body limit");
        assert_eq!(
            gunzip(&bomb, limit).map_err(|e| e.code),
            Err("payload_too_large")
        );
        // Exactly the limit inflates, and the buffer holding it is no larger than the limit.
        let at_limit = gunzip(&gzip(&vec![b' '; limit]), limit).unwrap();
        assert_eq!(at_limit.len(), limit);
        assert!(
            at_limit.capacity() <= limit,
            "capacity {}",
            at_limit.capacity()
        );
        assert_eq!(
            gunzip(&gzip(&vec![b' '; limit + 1]), limit).map_err(|e| e.code),
            Err("payload_too_large")
        );
    }

    proptest::proptest! {
        /// What is compressed inflates back to itself within the limit and is refused past it,
        /// and no input, gzip or not, yields more than the limit or a buffer larger than it.
        #[test]
        fn gunzip_round_trips_and_never_yields_past_the_limit(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
            limit in 1usize..5000,
        ) {
            let compressed = gzip(&data);
            match gunzip(&compressed, limit) {
                Ok(inflated) => {
                    proptest::prop_assert_eq!(&inflated, &data);
                    proptest::prop_assert!(inflated.capacity() <= limit);
                }
                Err(e) => {
                    proptest::prop_assert!(data.len() > limit);
                    proptest::prop_assert_eq!(e.code, "payload_too_large");
                }
            }
            if let Ok(inflated) = gunzip(&data, limit) {
                proptest::prop_assert!(inflated.len() <= limit && inflated.capacity() <= limit);
            }
        }
    }

    #[test]
    fn bodies_that_are_not_gzip_or_are_cut_short_are_invalid_body() {
        let whole = gzip(br#"{"website_id":"s"}"#);
        for bad in [
            &br#"{"website_id":"s","type":"pageview","url":"/"}"#[..],
            &whole[..whole.len() - 4],
            &whole[..10],
            b"\x1f\x8b",
        ] {
            assert_eq!(
                gunzip(bad, 1024).map_err(|e| e.code),
                Err("invalid_body"),
                "{bad:?}"
            );
        }
    }
}
