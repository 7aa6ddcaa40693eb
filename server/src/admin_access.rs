//! What an admin request must look like besides the token: without a configured token (loopback
//! only), a loopback `Host` and no foreign `Origin` — the defence against DNS rebinding and
//! cross-site request forgery from pages the operator's browser visits; and always, for a body,
//! `Content-Type: application/json`, which a cross-site form or `no-cors` fetch cannot send
//! without a preflight. The token itself is `auth`'s; which routes are admin is `routes`'.

use std::net::{Ipv4Addr, Ipv6Addr};

use axum::extract::Request;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Checks a request to an admin route on a server without a token: the request is addressed to
/// a loopback name or address (`Host`, and the authority of an absolute-form target), and an
/// `Origin`, when present, is this same loopback host. A page on another site never passes:
/// DNS rebinding keeps the attacker's name in `Host`, and a cross-site fetch or form sends its
/// own `Origin`.
pub fn check_loopback_request(headers: &HeaderMap, uri: &Uri) -> Result<(), ApiError> {
    let authority = addressed_authority(headers, uri)?;
    let mut origins = headers.get_all(header::ORIGIN).iter();
    let origin = match (origins.next(), origins.next()) {
        (None, _) => return Ok(()),
        (Some(origin), None) => origin.to_str().ok(),
        (Some(_), Some(_)) => None,
    };
    if origin.is_some_and(|origin| is_origin_of(origin, authority)) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_origin",
            "without an admin token, admin routes refuse requests from other origins \
             (the `Origin` header must be this server's own address)",
        ))
    }
}

/// The authority the request is addressed to, when every claim of it (the `Host` header and
/// an absolute-form target) is one loopback host; `forbidden_host` otherwise.
fn addressed_authority<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Result<&'a str, ApiError> {
    let forbidden = |why: &str| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_host",
            format!(
                "without an admin token, admin routes answer only requests addressed to \
                 localhost, 127.0.0.1 or [::1]: {why}"
            ),
        )
    };
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (None, _) => None,
        (Some(host), None) => Some(
            host.to_str()
                .map_err(|_| forbidden("the `Host` header is not text"))?,
        ),
        (Some(_), Some(_)) => return Err(forbidden("more than one `Host` header")),
    };
    let target = uri.authority().map(|authority| authority.as_str());
    let authority = host
        .or(target)
        .ok_or_else(|| forbidden("the `Host` header is missing"))?;
    for claimed in [host, target].into_iter().flatten() {
        if !is_loopback_authority(claimed) {
            return Err(forbidden(&format!("`{claimed}` is not a loopback host")));
        }
    }
    Ok(authority)
}

/// Whether `authority` (`host` or `host:port`) names this machine: `localhost` or a name under
/// `.localhost` (RFC 6761 reserves them for loopback), an IPv4 address in 127.0.0.0/8, or `[::1]`.
pub fn is_loopback_authority(authority: &str) -> bool {
    let (host_ok, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let Some((ip, rest)) = bracketed.split_once(']') else {
                return false;
            };
            let port = match rest {
                "" => None,
                _ => match rest.strip_prefix(':') {
                    Some(port) => Some(port),
                    None => return false,
                },
            };
            (
                ip.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback()),
                port,
            )
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (is_loopback_name(host), Some(port)),
            None => (is_loopback_name(authority), None),
        },
    };
    host_ok
        && port.is_none_or(|port| {
            (1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit())
        })
}

/// Whether `host` (no port) is a loopback name or IPv4 address.
fn is_loopback_name(host: &str) -> bool {
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return ip.is_loopback();
    }
    // A fully qualified name may end with a dot.
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    name == "localhost"
        || name.strip_suffix(".localhost").is_some_and(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        })
}

/// Whether `origin` (`scheme://host[:port]`) is the origin of a page served from `authority`.
fn is_origin_of(origin: &str, authority: &str) -> bool {
    let lower = origin.to_ascii_lowercase();
    lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"))
        .is_some_and(|rest| rest.eq_ignore_ascii_case(authority))
}

/// Middleware for admin routes: a request that may carry a body (`POST`, `PUT`, `PATCH`) must
/// say `Content-Type: application/json`, or gets 415 `unsupported_media_type` before its body
/// is read. A browser sends that type cross-site only after a CORS preflight, which admin
/// routes never grant.
pub async fn require_json_body(request: Request, next: Next) -> Response {
    let may_have_body = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH
    );
    if may_have_body && !is_json_content_type(request.headers()) {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "admin request bodies must be sent with `Content-Type: application/json`",
        )
        .into_response();
    }
    next.run(request).await
}

/// Whether the one `Content-Type` is `application/json`, with or without parameters.
fn is_json_content_type(headers: &HeaderMap) -> bool {
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    match (types.next(), types.next()) {
        (Some(value), None) => value.to_str().is_ok_and(|value| {
            let essence = value.split(';').next().unwrap_or_default().trim();
            essence.eq_ignore_ascii_case("application/json")
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn loopback_names_and_addresses_with_or_without_a_port_are_loopback() {
        for authority in [
            "localhost",
            "LOCALHOST:8080",
            "localhost.",
            "app.localhost:3000",
            "127.0.0.1",
            "127.0.0.1:1",
            "127.1.2.3:65535",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_loopback_authority(authority), "{authority}");
        }
    }

    #[test]
    fn other_hosts_and_malformed_authorities_are_not_loopback() {
        for authority in [
            "",
            "evil.example",
            "rebind.attacker.example:8080",
            "localhost.evil.example",
            "evillocalhost",
            ".localhost",
            "10.0.0.1",
            "0.0.0.0:80",
            "[::]:80",
            "[::ffff:127.0.0.1]",
            "[::1",
            "[::1]x",
            "[::1]8080",
            "localhost:",
            "localhost:80:80",
            "localhost:http",
            "localhost:123456",
            "127.0.0.1.evil.example",
            "user@localhost",
        ] {
            assert!(!is_loopback_authority(authority), "{authority:?}");
        }
    }

    #[test]
    fn the_origin_must_be_the_loopback_host_itself() {
        let uri = Uri::from_static("/api/websites");
        let ok = |pairs: &[(header::HeaderName, &str)]| {
            check_loopback_request(&headers(pairs), &uri).map_err(|e| e.code)
        };
        assert_eq!(ok(&[(header::HOST, "localhost:8080")]), Ok(()));
        assert_eq!(
            ok(&[
                (header::HOST, "localhost:8080"),
                (header::ORIGIN, "http://LOCALHOST:8080")
            ]),
            Ok(())
        );
        for origin in [
            "https://attacker.example",
            "http://localhost:8081",
            "http://127.0.0.1:8080",
            "null",
            "localhost:8080",
        ] {
            assert_eq!(
                ok(&[(header::HOST, "localhost:8080"), (header::ORIGIN, origin)]),
                Err("cross_origin"),
                "{origin}"
            );
        }
        assert_eq!(ok(&[]), Err("forbidden_host"));
        assert_eq!(
            ok(&[(header::HOST, "localhost"), (header::HOST, "localhost")]),
            Err("forbidden_host")
        );
        let absolute = Uri::from_static("http://evil.example/api/websites");
        assert_eq!(
            check_loopback_request(&headers(&[(header::HOST, "localhost")]), &absolute)
                .map_err(|e| e.code),
            Err("forbidden_host")
        );
    }

    #[test]
    fn only_application_json_is_a_json_content_type() {
        let is_json = |values: &[&str]| {
            is_json_content_type(&headers(
                &values
                    .iter()
                    .map(|v| (header::CONTENT_TYPE, *v))
                    .collect::<Vec<_>>(),
            ))
        };
        assert!(is_json(&["application/json"]));
        assert!(is_json(&["Application/JSON; charset=utf-8"]));
        assert!(!is_json(&[]));
        assert!(!is_json(&["text/plain;charset=UTF-8"]));
        assert!(!is_json(&["application/x-www-form-urlencoded"]));
        assert!(!is_json(&["application/jsonx"]));
        assert!(!is_json(&["application/json", "text/plain"]));
    }
}
