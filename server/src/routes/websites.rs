//! `/api/websites`: create, list, read, update and delete websites. Validates API input and
//! turns catalog errors into API errors; storing websites and registering them in the engine is
//! `WebsiteCatalog`'s job alone.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pulse_engine::{EngineError, WebsiteId};
use serde_json::{json, Map, Value};

use crate::body::read_body;
use crate::catalog::{BotPolicy, CatalogError, LogStart, Website, WebsiteCatalog, WebsitePatch};
use crate::clock;
use crate::error::ApiError;
use crate::state::AppState;

const MAX_NAME_CHARS: usize = 100;
const MAX_DOMAIN_BYTES: usize = 253;
const GENERATED_ID_LEN: usize = 12;
/// Most `aliases` one website may list.
const MAX_ALIASES: usize = 32;
/// How long a website created during start-up waits for replay before the answer is 503.
const REPLAY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn json_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::invalid_json("the body must be a JSON object")),
        Err(e) => Err(ApiError::invalid_json(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

fn opt_str<'a>(body: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid_field(field, "must be a string")),
    }
}

fn name_field(body: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    let Some(name) = opt_str(body, "name")? else {
        return Ok(None);
    };
    let name = name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::invalid_field(
            "name",
            format!("must be 1 to {MAX_NAME_CHARS} printable characters"),
        ));
    }
    Ok(Some(name.to_owned()))
}

fn domain_field(body: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    let Some(domain) = opt_str(body, "domain")? else {
        return Ok(None);
    };
    host_name(domain).map(Some).ok_or_else(|| {
        ApiError::invalid_field(
            "domain",
            "must be a host name such as example.com (no scheme, port or path)",
        )
    })
}

/// `text` as a normalised host name: trimmed, internationalised labels in their ASCII form
/// (`bücher.example` → `xn--bcher-kva.example`), lower case, without a trailing dot; `None`
/// unless every label is 1 to 63 letters, digits or hyphens, not starting or ending with one,
/// and the whole fits `MAX_DOMAIN_BYTES`. A scheme, port, path or anything else is refused
/// rather than guessed at: the domain decides what counts as a self-referral.
fn host_name(text: &str) -> Option<String> {
    let text = text.trim();
    let text = text.strip_suffix('.').unwrap_or(text);
    let ascii = idna::domain_to_ascii(text).ok()?;
    let valid_label = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    (!ascii.is_empty() && ascii.len() <= MAX_DOMAIN_BYTES && ascii.split('.').all(valid_label))
        .then_some(ascii)
}

fn bot_policy_field(body: &Map<String, Value>) -> Result<Option<BotPolicy>, ApiError> {
    match opt_str(body, "bot_policy")? {
        None => Ok(None),
        Some("exclude") => Ok(Some(BotPolicy::Exclude)),
        Some("include") => Ok(Some(BotPolicy::Include)),
        Some(_) => Err(ApiError::invalid_field(
            "bot_policy",
            "must be \"exclude\" or \"include\"",
        )),
    }
}

fn respect_dnt_field(body: &Map<String, Value>) -> Result<Option<bool>, ApiError> {
    match body.get("respect_dnt") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid_field(
            "respect_dnt",
            "must be true or false",
        )),
    }
}

/// `aliases`: more host names the website is served under, each checked and normalised like
/// `domain` (`host_name`). An Umami website UUID is such a name (one label of hex digits and
/// hyphens), so it can be an alias too.
fn aliases_field(body: &Map<String, Value>) -> Result<Option<Vec<String>>, ApiError> {
    let items = match body.get("aliases") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) if items.len() <= MAX_ALIASES => items,
        Some(_) => {
            return Err(ApiError::invalid_field(
                "aliases",
                format!("must be an array of at most {MAX_ALIASES} host names"),
            ))
        }
    };
    items
        .iter()
        .map(|item| {
            match item {
                Value::String(alias) => host_name(alias),
                _ => None,
            }
            .ok_or_else(|| {
                ApiError::invalid_field(
                    "aliases",
                    "must hold host names such as example.com (no scheme, port or path)",
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn accept_client_ids_field(body: &Map<String, Value>) -> Result<Option<bool>, ApiError> {
    match body.get("accept_client_ids") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid_field(
            "accept_client_ids",
            "must be true or false",
        )),
    }
}

/// A random URL-safe id: 12 characters of `[A-Za-z0-9_-]`, 72 bits.
fn generate_id() -> Result<String, ApiError> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = [0u8; GENERATED_ID_LEN];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(b & 63)]))
        .collect())
}

/// Runs a catalog change on tokio's blocking pool and maps its error. The change fsyncs the
/// websites file; on a runtime worker that would stall every collect scheduled behind it.
async fn change_catalog<T: Send + 'static>(
    state: &Arc<AppState>,
    change: impl FnOnce(&WebsiteCatalog) -> Result<T, CatalogError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = Arc::clone(state);
    tokio::task::spawn_blocking(move || change(&state.websites))
        .await
        .map_err(|e| ApiError::internal(format!("the website change did not finish: {e}")))?
        .map_err(catalog_error)
}

/// A create while the log is still being replayed: where the website begins is not known yet.
fn not_ready() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        "the server is still replaying its log; create the website shortly",
    )
    .retry_after(1)
}

/// The API's answer to a refused or failed catalog change (the codes README.md lists).
fn catalog_error(error: CatalogError) -> ApiError {
    match error {
        CatalogError::WebsiteExists { .. } => ApiError::new(
            StatusCode::CONFLICT,
            "website_exists",
            "a website with this id already exists",
        ),
        CatalogError::UnknownWebsite { .. } => ApiError::unknown_website(),
        CatalogError::Conflict { .. } => ApiError::new(
            StatusCode::CONFLICT,
            "website_changed",
            "the website was changed or deleted on another node meanwhile; read it and retry",
        ),
        CatalogError::TooManyWebsites { limit }
        | CatalogError::EngineRefused {
            source: EngineError::TooManyWebsites { limit },
            ..
        } => ApiError::new(
            StatusCode::CONFLICT,
            "too_many_websites",
            format!("this server holds at most {limit} websites"),
        ),
        CatalogError::InvalidId { .. } => {
            ApiError::invalid_field("id", "must be 1 to 64 characters of A-Z a-z 0-9 - _")
        }
        CatalogError::EngineRefused { .. } => {
            tracing::error!(%error, "the engine refused a website");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "website_refused",
                "the website could not be registered; nothing was changed",
            )
        }
        CatalogError::StorageUnavailable(_) => {
            tracing::warn!(%error, "website change refused");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster_unavailable",
                error.to_string(),
            )
            .retry_after(2)
        }
        CatalogError::LogNotReady => not_ready(),
        CatalogError::Storage(_) => {
            tracing::error!(%error, "websites file");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage_failed",
                "the websites file could not be written",
            )
        }
    }
}

pub async fn list(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({ "data": state.websites.list() }))
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let entry = state
        .websites
        .get(&id)
        .ok_or_else(ApiError::unknown_website)?;
    Ok(Json(json!({ "data": entry.website })))
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, &headers, &state.http, &state.bodies).await?;
    let body = json_object(&bytes)?;
    let id = match opt_str(&body, "id")? {
        Some(id) => {
            WebsiteId::new(id).map_err(|_| {
                ApiError::invalid_field("id", "must be 1 to 64 characters of A-Z a-z 0-9 - _")
            })?;
            id.to_owned()
        }
        None => generate_id()?,
    };
    let website = Website {
        id,
        name: name_field(&body)?.ok_or_else(|| ApiError::missing_field("name"))?,
        domain: domain_field(&body)?.ok_or_else(|| ApiError::missing_field("domain"))?,
        bot_policy: bot_policy_field(&body)?.unwrap_or(BotPolicy::Exclude),
        respect_dnt: respect_dnt_field(&body)?.unwrap_or(true),
        created_at: clock::format_rfc3339(clock::now_ms()),
        aliases: aliases_field(&body)?.unwrap_or_default(),
        accept_client_ids: accept_client_ids_field(&body)?
            .unwrap_or(crate::catalog::accept_client_ids_by_default()),
    };
    // A website's events start where the log stands as it enters the engine (see
    // `WebsiteCatalog::create`), which is known once replay is done: a create during start-up
    // waits for it. In cluster mode the log is the stream.
    let cluster_start = match &state.cluster {
        Some(cluster) => Some(cluster.next_seq().await.map_err(|error| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster_unavailable",
                format!("the cluster's event stream cannot be read: {error}"),
            )
            .retry_after(2)
        })?),
        None => {
            let _ = tokio::time::timeout(REPLAY_WAIT, state.log.status().replayed()).await;
            None
        }
    };
    let log_owner = Arc::clone(&state);
    let created = change_catalog(&state, move |catalog| {
        let start = match cluster_start {
            Some(seq) => LogStart::At(seq),
            None => LogStart::Local(&log_owner.log),
        };
        catalog.create(website, start)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(json!({ "data": created }))).into_response())
}

pub async fn update(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let bytes = read_body(body, &headers, &state.http, &state.bodies).await?;
    let body = json_object(&bytes)?;
    if opt_str(&body, "id")?.is_some_and(|new_id| new_id != id) {
        return Err(ApiError::invalid_field("id", "cannot be changed"));
    }
    let patch = WebsitePatch {
        name: name_field(&body)?,
        domain: domain_field(&body)?,
        bot_policy: bot_policy_field(&body)?,
        respect_dnt: respect_dnt_field(&body)?,
        aliases: aliases_field(&body)?,
        accept_client_ids: accept_client_ids_field(&body)?,
    };
    let updated = change_catalog(&state, move |catalog| catalog.patch(&id, patch)).await?;
    Ok(Json(json!({ "data": updated })))
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    change_catalog(&state, move |catalog| catalog.delete(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use clap::Parser;
    use tower::ServiceExt;

    use crate::config::Config;

    /// Sends one request through the full router and returns the status and the JSON body.
    async fn call(state: &Arc<AppState>, method: &str, uri: &str, body: Value) -> (u16, Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            // Without an admin token, admin routes answer loopback names only.
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = crate::routes::router(Arc::clone(state))
            .oneshot(request)
            .await
            .unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (status, json)
    }

    #[test]
    fn a_domain_is_a_normalised_host_name_or_refused() {
        assert_eq!(host_name("Example.COM").as_deref(), Some("example.com"));
        assert_eq!(
            host_name(" www.example.com. ").as_deref(),
            Some("www.example.com")
        );
        assert_eq!(
            host_name("Bücher.example").as_deref(),
            Some("xn--bcher-kva.example")
        );
        assert_eq!(host_name("localhost").as_deref(), Some("localhost"));
        for refused in [
            "http://example.com/x",
            "-",
            "example.com:8080",
            "example.com/x",
            "-example.com",
            "example-.com",
            "a..b",
            "",
            "exa mple.com",
            &"a".repeat(64),
        ] {
            assert_eq!(host_name(refused), None, "{refused:?}");
        }
    }

    #[tokio::test]
    async fn a_website_the_engine_refuses_is_a_409_and_is_stored_nowhere() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().to_str().unwrap();
        let config = Config::parse_from(["pulse", "--data-dir", data_dir, "--max-websites", "2"]);
        let state = Arc::new(AppState::open(&config, clock::now_ms()).unwrap());
        let site = |id: &str| json!({"id": id, "name": "Blog", "domain": "example.com"});
        assert_eq!(
            call(&state, "POST", "/api/websites", site("a")).await.0,
            201
        );
        let file_before = std::fs::read(dir.path().join("websites.json")).unwrap();
        // The engine fills up behind the catalog's back, so only the engine step refuses.
        state
            .engine
            .add_website(WebsiteId::new("intruder").unwrap())
            .unwrap();
        let (status, body) = call(&state, "POST", "/api/websites", site("b")).await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["code"], "too_many_websites", "{body}");
        let (_, listed) = call(&state, "GET", "/api/websites", Value::Null).await;
        assert_eq!(listed["data"].as_array().unwrap().len(), 1, "{listed}");
        assert_eq!(
            std::fs::read(dir.path().join("websites.json")).unwrap(),
            file_before
        );
        let (status, _) = call(&state, "GET", "/api/websites/b/realtime", Value::Null).await;
        assert_eq!(status, 404);
    }

    /// Events a handler resolved for a website just before it was deleted can still be queued
    /// while the same id is created again; a restarted server must count exactly what the
    /// running one counted. (A create read where the new website starts in the log before it
    /// registered the website in the engine, with the websites file's fsync in between: events
    /// queued in that gap were not counted live, but were on replay.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_website_recreated_while_stale_events_arrive_counts_the_same_after_a_restart() {
        use std::sync::atomic::{AtomicBool, Ordering};

        use pulse_snapshot::LogEntry;
        use pulse_testkit::fixtures::pageview_event;

        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().to_str().unwrap();
        let config = Config::parse_from(["pulse", "--data-dir", data_dir]);
        let state = Arc::new(AppState::open(&config, clock::now_ms()).unwrap());
        let site = json!({"id": "x", "name": "Blog", "domain": "example.com"});
        assert_eq!(
            call(&state, "POST", "/api/websites", site.clone()).await.0,
            201
        );
        assert_eq!(
            call(&state, "DELETE", "/api/websites/x", Value::Null)
                .await
                .0,
            204
        );
        let x = WebsiteId::new("x").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stale_handler = tokio::spawn({
            let (state, stop) = (Arc::clone(&state), Arc::clone(&stop));
            async move {
                let mut sent = 0_u64;
                while !stop.load(Ordering::Relaxed) {
                    sent += 1;
                    let event = pageview_event("x", sent, clock::now_ms());
                    let entry = LogEntry::Event {
                        event: Arc::new(event),
                        carried_from: None,
                    };
                    crate::routes::collect::submit(&state, vec![entry])
                        .await
                        .unwrap();
                    tokio::task::yield_now().await;
                }
                sent
            }
        });
        assert_eq!(call(&state, "POST", "/api/websites", site).await.0, 201);
        // Some events after the create too, so both sides of it are exercised.
        let until = state
            .engine
            .realtime(&x, clock::now_ms(), true)
            .unwrap()
            .total_in_window
            + 100;
        while state
            .engine
            .realtime(&x, clock::now_ms(), true)
            .unwrap()
            .total_in_window
            < until
        {
            tokio::task::yield_now().await;
        }
        stop.store(true, Ordering::Relaxed);
        assert!(stale_handler.await.unwrap() > 100);
        let now_ms = clock::now_ms();
        let live = state.engine.realtime(&x, now_ms, true).unwrap();
        state.log.shutdown();
        drop(state);
        let restarted = AppState::open(&config, clock::now_ms()).unwrap();
        restarted.log.status().replayed().await;
        let replayed = restarted.engine.realtime(&x, now_ms, true).unwrap();
        assert_eq!(
            (replayed.total_in_window, replayed.active_visitors),
            (live.total_in_window, live.active_visitors),
            "the log's replay must count what was counted live"
        );
    }

    #[test]
    fn catalog_errors_answer_their_documented_codes() {
        let engine_refused = |source| CatalogError::EngineRefused {
            id: "b".into(),
            source,
        };
        let cases = [
            (
                CatalogError::WebsiteExists { id: "a".into() },
                409,
                "website_exists",
            ),
            (
                CatalogError::UnknownWebsite { id: "a".into() },
                404,
                "unknown_website",
            ),
            (
                CatalogError::TooManyWebsites { limit: 2 },
                409,
                "too_many_websites",
            ),
            (
                engine_refused(EngineError::TooManyWebsites { limit: 2 }),
                409,
                "too_many_websites",
            ),
            (
                engine_refused(EngineError::InvalidWebsiteId),
                500,
                "website_refused",
            ),
            (
                CatalogError::InvalidId { id: "?".into() },
                400,
                "invalid_field",
            ),
            (
                CatalogError::Storage(std::io::Error::other("disk full")),
                500,
                "storage_failed",
            ),
            (
                CatalogError::StorageUnavailable("no responders".into()),
                503,
                "cluster_unavailable",
            ),
            (CatalogError::LogNotReady, 503, "not_ready"),
        ];
        for (error, status, code) in cases {
            let what = error.to_string();
            let answer = catalog_error(error);
            assert_eq!(
                (answer.status.as_u16(), answer.code),
                (status, code),
                "{what}"
            );
        }
    }

    #[test]
    fn generated_ids_are_url_safe_website_ids() {
        let a = generate_id().unwrap();
        let b = generate_id().unwrap();
        assert_eq!(a.len(), GENERATED_ID_LEN);
        assert_ne!(a, b);
        assert!(WebsiteId::new(&a).is_ok());
    }

    #[test]
    fn website_fields_are_validated() {
        let body = |v: Value| v.as_object().unwrap().clone();
        assert!(name_field(&body(json!({"name": ""}))).is_err());
        assert!(name_field(&body(json!({"name": "x".repeat(101)}))).is_err());
        assert_eq!(
            name_field(&body(json!({"name": " Blog "})))
                .unwrap()
                .as_deref(),
            Some("Blog")
        );
        assert!(domain_field(&body(json!({"domain": "not a domain"}))).is_err());
        assert!(domain_field(&body(json!({"domain": 5}))).is_err());
        assert!(bot_policy_field(&body(json!({"bot_policy": "maybe"}))).is_err());
        assert!(respect_dnt_field(&body(json!({"respect_dnt": "yes"}))).is_err());
    }

    #[test]
    fn aliases_are_normalised_host_names_like_the_domain() {
        let aliases = |v: Value| aliases_field(v.as_object().unwrap()).map_err(|e| e.code);
        assert_eq!(
            aliases(
                json!({"aliases": [" WWW.Example.ORG. ", "Bücher.example", "127.0.0.1",
                "94db1cb1-74f4-4a40-ad6c-962362670409"]})
            ),
            Ok(Some(vec![
                "www.example.org".to_owned(),
                "xn--bcher-kva.example".to_owned(),
                "127.0.0.1".to_owned(),
                "94db1cb1-74f4-4a40-ad6c-962362670409".to_owned(),
            ]))
        );
        for refused in [
            json!(["https://example.org/"]),
            json!(["example.org:8080"]),
            json!(["example.org/x"]),
            json!(["-example.org"]),
            json!([""]),
            json!([5]),
            json!("example.org"),
        ] {
            assert_eq!(
                aliases(json!({ "aliases": refused })),
                Err("invalid_field"),
                "{refused}"
            );
        }
    }
}
