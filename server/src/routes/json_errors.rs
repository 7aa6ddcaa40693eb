//! The last word on error bodies inside the router: an error answer that is not already JSON —
//! an axum extractor's rejection, such as `Path` refusing `%ff` with `text/plain` — is rewritten
//! to the documented `{"error":{"code","message"}}` shape, keeping its status and its text as
//! the message. Handlers still build their errors with `ApiError`; this only catches what they
//! never see. Errors hyper answers before the router runs are `wire_errors`' job.

use axum::body::to_bytes;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// The longest rejection text kept as a message (the rest is cut).
const MAX_MESSAGE_BYTES: usize = 512;

/// Rewrites a non-JSON 4xx or 5xx answer to the JSON error shape; passes everything else.
pub async fn errors_as_json(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    // Rejection texts are a line long; a larger body is not worth reading for a message.
    let text = to_bytes(body, 4 * MAX_MESSAGE_BYTES)
        .await
        .ok()
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .filter(|text| !text.is_empty());
    let message = match text {
        Some(text) => truncated(text),
        None => status
            .canonical_reason()
            .unwrap_or("the request failed")
            .to_owned(),
    };
    let mut rewritten = ApiError::new(status, code_of(status), message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().append(name, value.clone());
        }
    }
    rewritten.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    rewritten
}

/// The error code for an answer whose producer gave none, from its status alone.
pub fn code_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable_content",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        status if status.is_server_error() => "internal",
        _ => "bad_request",
    }
}

fn truncated(mut text: String) -> String {
    if text.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    async fn body_json(response: Response) -> serde_json::Value {
        let bytes = to_bytes(response.into_body(), 1 << 16).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn a_text_rejection_becomes_a_json_error_with_its_status_and_text() {
        let rejection = (
            StatusCode::BAD_REQUEST,
            "Invalid URL: Invalid UTF-8 in `id`",
        )
            .into_response();
        let response = errors_as_json(rejection).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            body_json(response).await,
            serde_json::json!({"error": {"code": "bad_request",
                "message": "Invalid URL: Invalid UTF-8 in `id`"}})
        );
    }

    #[tokio::test]
    async fn an_empty_error_gets_the_reason_phrase_and_headers_survive() {
        let mut empty = Response::new(Body::empty());
        *empty.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        empty
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        let response = errors_as_json(empty).await;
        assert_eq!(response.headers()[header::ALLOW], "GET");
        let body = body_json(response).await;
        assert_eq!(body["error"]["code"], "unsupported_media_type");
        assert_eq!(body["error"]["message"], "Unsupported Media Type");
    }

    #[tokio::test]
    async fn json_errors_and_successes_pass_untouched() {
        let api = ApiError::not_found().into_response();
        let passed = errors_as_json(api).await;
        assert_eq!(body_json(passed).await["error"]["code"], "not_found");
        let ok = errors_as_json((StatusCode::OK, "plain").into_response()).await;
        let bytes = to_bytes(ok.into_body(), 100).await.unwrap();
        assert_eq!(&bytes[..], b"plain");
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let cut = truncated("é".repeat(MAX_MESSAGE_BYTES));
        assert!(cut.len() <= MAX_MESSAGE_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
