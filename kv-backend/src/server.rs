//! The HTTP server: [`app`] builds the router (used as is by in-process tests)
//! and [`run`] serves it on an already bound listener until shutdown, so tests
//! can bind port 0. The `render_errors` middleware gives every error its NGINX
//! body and request id, and logs server faults once.

use std::future::Future;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{CONNECTION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{any, get, post};
use axum::Router;
use tokio::net::TcpListener;

use crate::api;
use crate::catchup;
use crate::config::Config;
use crate::error::Error;
use crate::replication;
use crate::state;
use crate::store::Store;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The keyval data and its writer.
    pub store: Store,
    /// Largest accepted request body in bytes.
    pub max_body: u64,
    /// Capacity of the replication log (reported by the status endpoint).
    pub log_capacity: u64,
    /// Largest accepted catch-up body (a log batch or a snapshot): room for
    /// every zone's content twice over, and never less than `max_body`.
    pub catchup_max_body: u64,
    /// Path prefix of the read-only mount of the API (`/ro`), if any.
    pub read_only_prefix: Option<String>,
}

impl AppState {
    /// State for `store` with the limits of `config`.
    pub fn new(store: Store, config: &Config) -> AppState {
        AppState {
            store,
            max_body: config.max_body,
            log_capacity: config.log_capacity,
            catchup_max_body: config
                .zones
                .iter()
                .fold(1 << 20, |sum: u64, z| {
                    sum.saturating_add(z.size.saturating_mul(2))
                })
                .max(config.max_body),
            read_only_prefix: config.read_only_prefix.clone(),
        }
    }
}

/// The whole HTTP interface as a router, without a socket.
pub fn app(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/api", any(api::versions))
        .route("/api/", any(api::versions))
        .route("/api/{*rest}", any(api::dispatch));
    if let Some(prefix) = &state.read_only_prefix {
        // The same API with every write refused (NGINX `api write=off`).
        router = router
            .route(prefix, any(api::versions))
            .route(&format!("{prefix}/"), any(api::versions))
            .route(&format!("{prefix}/{{*rest}}"), any(api::dispatch_read_only));
    }
    router
        .route(
            "/replikv/state/{kind}/{zone}",
            get(state::export).fallback(api::method_disabled),
        )
        .route(
            "/replikv/status",
            get(api::status).fallback(api::method_disabled),
        )
        .route(
            "/replikv/log",
            get(catchup::log).fallback(api::method_disabled),
        )
        .route(
            "/replikv/apply",
            post(catchup::apply).fallback(api::method_disabled),
        )
        .route(
            "/replikv/snapshot",
            get(catchup::snapshot)
                .put(catchup::restore)
                .fallback(api::method_disabled),
        )
        .fallback(api::path_not_found)
        .layer(middleware::from_fn(render_errors))
        .with_state(state)
}

/// Serves `app(state)` on `listener` until `shutdown` completes, then finishes
/// the requests in flight.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Turns an [`Error`] stashed by a handler into the NGINX error body.
async fn render_errors(request: Request, next: Next) -> Response {
    let request_id = request_id(request.headers());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut response = next.run(request).await;
    if let Some(error) = response.extensions_mut().remove::<Error>() {
        if error.is_internal() {
            tracing::error!(%method, %path, %request_id, %error, "request failed");
        } else {
            tracing::debug!(%method, %path, %request_id, %error, "request refused");
        }
        *response.body_mut() = Body::from(error.body(&request_id));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        // A 413 is answered before the body was read, so the connection cannot
        // carry another request: saying so keeps Envoy from reusing it and
        // failing the next request on it with a 503.
        if matches!(error, Error::BodyTooLarge) {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
    }
    response
}

/// The client's `x-request-id` when it is 32 hex digits once dashes are
/// removed (a UUID qualifies), lowercased; a random id otherwise.
pub fn request_id(headers: &HeaderMap) -> String {
    if let Some(given) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        let id: String = given
            .chars()
            .filter(|c| *c != '-')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if replication::is_id(&id) {
            return id;
        }
    }
    replication::new_history_id().unwrap_or_else(|_| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("{nanos:032x}")
    })
}
