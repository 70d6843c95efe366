//! The HTTP handlers: the NGINX Plus keyval API under `/api/{4..=9}/` and
//! replikv's `/replikv/status`. Handlers parse the path, decode the request
//! with `request.rs`, read the in-memory view or queue a write, and shape the
//! answer; every failure is an [`Error`].

use std::collections::BTreeMap;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;

use crate::apply::{Origin, WriteKind, WriteOp};
use crate::error::{format, Error, Result};
use crate::replication;
use crate::request::{decode_patch, decode_post, key_argument};
use crate::server::AppState;
use crate::writer::{now_ms, Applied, Reply};
use crate::zone::{ZoneId, ZoneKind};

/// API versions served: 4 (the error object's current shape) through 9.
pub const VERSIONS: [u32; 6] = [4, 5, 6, 7, 8, 9];

/// What a path under `/api/` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/api/{v}/`: the endpoints of a version.
    Version,
    /// `/api/{v}/http/` or `/api/{v}/stream/`.
    Namespace,
    /// `/api/{v}/{t}/keyvals` or `.../keyvals/`: every zone of a namespace.
    AllZones(ZoneKind),
    /// `/api/{v}/{t}/keyvals/{zone}`.
    Zone(ZoneId),
}

/// Resolves a path under `/api/` (the part after `/api/`).
pub fn route(rest: &str) -> Result<Target> {
    let mut segments = rest.split('/');
    let version = segments.next().unwrap_or_default();
    if !version
        .parse::<u32>()
        .is_ok_and(|v| VERSIONS.contains(&v) && !version.starts_with(['0', '+']))
    {
        return Err(Error::UnknownVersion);
    }
    let rest: Vec<&str> = segments.collect();
    let kind = |segment: &str| match segment {
        "http" => Some(ZoneKind::Http),
        "stream" => Some(ZoneKind::Stream),
        _ => None,
    };
    match rest.as_slice() {
        [] | [""] => Ok(Target::Version),
        [t] | [t, ""] if kind(t).is_some() => Ok(Target::Namespace),
        [t, "keyvals"] | [t, "keyvals", ""] => {
            kind(t).map(Target::AllZones).ok_or(Error::PathNotFound)
        }
        [t, "keyvals", zone] => kind(t)
            .map(|kind| {
                Target::Zone(ZoneId {
                    kind,
                    name: (*zone).to_owned(),
                })
            })
            .ok_or(Error::PathNotFound),
        _ => Err(Error::PathNotFound),
    }
}

/// `GET /api/`: the supported versions.
pub async fn versions(method: Method) -> Result<Response> {
    read_only(&method)?;
    Ok(json(&VERSIONS))
}

/// Anything outside the known endpoints.
pub async fn path_not_found() -> Error {
    Error::PathNotFound
}

/// Every method but GET and HEAD on a read-only endpoint.
pub async fn method_disabled() -> Error {
    Error::MethodDisabled
}

/// Every request under `/api/{*rest}`.
pub async fn dispatch(State(state): State<AppState>, request: Request) -> Result<Response> {
    let rest = request
        .uri()
        .path()
        .strip_prefix("/api/")
        .unwrap_or_default()
        .to_owned();
    serve(&state, &rest, request, true).await
}

/// Every request under the read-only mount (`/ro/{*rest}`): the same API, with
/// every write 405 `MethodDisabled`, shadow writes included.
pub async fn dispatch_read_only(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response> {
    let prefix = state.read_only_prefix.as_deref().unwrap_or_default();
    let rest = request
        .uri()
        .path()
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or_default()
        .to_owned();
    serve(&state, &rest, request, false).await
}

/// Path and version first, then the method, then the zone.
async fn serve(state: &AppState, rest: &str, request: Request, writable: bool) -> Result<Response> {
    let target = route(rest)?;
    let method = request.method().clone();
    if !writable {
        read_only(&method)?;
    }
    match target {
        Target::Version => {
            read_only(&method)?;
            Ok(json(&["http", "stream"]))
        }
        Target::Namespace => {
            read_only(&method)?;
            Ok(json(&["keyvals"]))
        }
        Target::AllZones(kind) => {
            read_only(&method)?;
            Ok(all_zones(state, kind))
        }
        Target::Zone(zone) => {
            if state.store.zone(&zone).is_none() {
                return Err(Error::ZoneNotFound(zone.name));
            }
            match method {
                Method::GET | Method::HEAD => read_zone(state, &zone, request.uri().query()),
                Method::POST | Method::PATCH | Method::DELETE => {
                    Ok(write_zone(state, zone, request).await)
                }
                _ => Err(Error::MethodDisabled),
            }
        }
    }
}

fn read_only(method: &Method) -> Result<()> {
    match *method {
        Method::GET | Method::HEAD => Ok(()),
        _ => Err(Error::MethodDisabled),
    }
}

/// `{"zone": {"k": "v"}, ...}` for every zone of a namespace, empty ones as `{}`.
fn all_zones(state: &AppState, kind: ZoneKind) -> Response {
    let now = now_ms();
    // Owned copies, so serializing happens after the read lock is released.
    let zones: BTreeMap<String, BTreeMap<String, String>> = state.store.read(|data| {
        state
            .store
            .zones()
            .iter()
            .filter(|z| z.id.kind == kind)
            .map(|z| {
                let entries = data
                    .zones
                    .get(&z.id)
                    .map(|zone| {
                        zone.live(now)
                            .map(|(k, e)| (k.clone(), e.value.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                (z.id.name.clone(), entries)
            })
            .collect()
    });
    json(&zones)
}

/// `GET {zone}` and `GET {zone}?key=K`.
fn read_zone(state: &AppState, zone: &ZoneId, query: Option<&str>) -> Result<Response> {
    let now = now_ms();
    let key = key_argument(query)?;
    if key.as_deref() == Some("") {
        return Err(Error::Format(format::KEY_REQUIRED));
    }
    let entries: BTreeMap<String, String> = state.store.read(|data| {
        let Some(zone) = data.zones.get(zone) else {
            return BTreeMap::new();
        };
        match &key {
            Some(key) => zone
                .get_live(key, now)
                .map(|e| (key.clone(), e.value.clone()))
                .into_iter()
                .collect(),
            None => zone
                .live(now)
                .map(|(k, e)| (k.clone(), e.value.clone()))
                .collect(),
        }
    });
    if let Some(key) = key {
        if entries.is_empty() {
            return Err(Error::KeyNotFound(key));
        }
    }
    Ok(json(&entries))
}

/// POST, PATCH and DELETE on a zone, from a client or as a shadow write.
async fn write_zone(state: &AppState, zone: ZoneId, request: Request) -> Response {
    let shadow = match replication::shadow_meta(request.headers()) {
        Ok(shadow) => shadow,
        Err(error) => {
            // Still a shadow write (x-replication-seq is present): say where we are.
            let reply = current(state, Err(error));
            return shadow_response(reply, &Method::POST);
        }
    };
    let method = request.method().clone();
    let decoded = decode(state, &method, request).await;
    let kind = match decoded {
        Ok(kind) => kind,
        Err(error) => {
            return match shadow {
                Some(_) => shadow_response(current(state, Err(error)), &method),
                None => error.into_response(),
            };
        }
    };
    let is_shadow = shadow.is_some();
    let op = WriteOp::Zone {
        zone,
        kind,
        origin: shadow.map_or(Origin::Client, Origin::Shadow),
    };
    let reply = state.store.write(op).await;
    if is_shadow {
        shadow_response(reply, &method)
    } else {
        client_response(reply, &method)
    }
}

async fn decode(state: &AppState, method: &Method, request: Request) -> Result<WriteKind> {
    if *method == Method::DELETE {
        return Ok(WriteKind::Clear);
    }
    let (parts, body) = request.into_parts();
    let body = read_body(&parts.headers, body, state.max_body).await?;
    if *method == Method::POST {
        decode_post(&body).map(WriteKind::Post)
    } else {
        decode_patch(&body).map(WriteKind::Patch)
    }
}

/// Reads a body of at most `limit` bytes: a declared larger length is refused
/// before reading anything, and the streaming read stops at the limit.
pub(crate) async fn read_body(headers: &HeaderMap, body: Body, limit: u64) -> Result<Bytes> {
    if let Some(length) = headers.get(CONTENT_LENGTH) {
        let length = length
            .to_str()
            .ok()
            .and_then(|l| l.parse::<u64>().ok())
            .ok_or(Error::BodyRead)?;
        if length > limit {
            return Err(Error::BodyTooLarge);
        }
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(Error::BodyTooLarge),
        Err(_) => Err(Error::BodyRead),
    }
}

fn current(state: &AppState, result: Result<Applied>) -> Reply {
    let (history, seq) = state
        .store
        .read(|data| (data.meta.history.clone(), data.meta.seq));
    Reply {
        result,
        history,
        seq,
    }
}

fn success_status(method: &Method) -> StatusCode {
    if *method == Method::POST {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    }
}

/// 201/204 with the write's seq; the error otherwise.
fn client_response(reply: Reply, method: &Method) -> Response {
    match reply.result {
        Ok(Applied::Written { seq, applied_at }) => {
            let mut response = success_status(method).into_response();
            set_replication_headers(
                response.headers_mut(),
                &reply.history,
                seq,
                Some(applied_at),
            );
            response
        }
        Ok(Applied::Duplicate | Applied::Purged) => StatusCode::OK.into_response(),
        Err(error) => error.into_response(),
    }
}

/// Like a client answer, 200 for a duplicate; every answer says where this node is.
pub(crate) fn shadow_response(reply: Reply, method: &Method) -> Response {
    let (mut response, applied_at) = match reply.result {
        Ok(Applied::Written { applied_at, .. }) => {
            (success_status(method).into_response(), Some(applied_at))
        }
        Ok(Applied::Duplicate | Applied::Purged) => (StatusCode::OK.into_response(), None),
        Err(error) => (error.into_response(), None),
    };
    set_replication_headers(
        response.headers_mut(),
        &reply.history,
        reply.seq,
        applied_at,
    );
    response
}

fn set_replication_headers(
    headers: &mut HeaderMap,
    history: &str,
    seq: u64,
    applied_at: Option<u64>,
) {
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    set(replication::HISTORY, history.to_owned());
    set(replication::SEQ, seq.to_string());
    if let Some(applied_at) = applied_at {
        set(replication::APPLIED_AT, applied_at.to_string());
    }
}

/// `GET /replikv/status`: history, seq, log and per-zone counts.
pub async fn status(State(state): State<AppState>) -> Response {
    #[derive(Serialize)]
    struct Status {
        history: String,
        seq: u64,
        applied_at: u64,
        commits: u64,
        log: Log,
        zones: BTreeMap<String, ZoneStatus>,
    }
    #[derive(Serialize)]
    struct Log {
        first_seq: u64,
        records: u64,
        capacity: u64,
    }
    #[derive(Serialize)]
    struct ZoneStatus {
        keys: usize,
        used_bytes: u64,
        size: u64,
        timeout_ms: Option<u64>,
        r#type: crate::zone::KeyType,
    }
    let now = now_ms();
    let status = state.store.read(|data| Status {
        history: data.meta.history.clone(),
        seq: data.meta.seq,
        applied_at: data.meta.applied_at,
        commits: data.commits,
        log: Log {
            first_seq: data.meta.log_first,
            records: data.meta.log_len,
            capacity: state.log_capacity,
        },
        zones: state
            .store
            .zones()
            .iter()
            .map(|config| {
                let zone = data.zones.get(&config.id);
                let status = ZoneStatus {
                    keys: zone.map_or(0, |z| z.live(now).count()),
                    used_bytes: zone.map_or(0, |z| z.used()),
                    size: config.size,
                    timeout_ms: config.timeout_ms,
                    r#type: config.key_type,
                };
                (config.id.to_string(), status)
            })
            .collect(),
    });
    json(&status)
}

/// A 200 JSON answer.
pub(crate) fn json(value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            body,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "response serialization failed");
            Error::Storage.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_to_targets() {
        assert_eq!(route("9"), Ok(Target::Version));
        assert_eq!(route("9/"), Ok(Target::Version));
        assert_eq!(route("4/stream/"), Ok(Target::Namespace));
        assert_eq!(
            route("9/http/keyvals"),
            Ok(Target::AllZones(ZoneKind::Http))
        );
        assert_eq!(
            route("9/http/keyvals/"),
            Ok(Target::AllZones(ZoneKind::Http))
        );
        assert_eq!(
            route("9/stream/keyvals/s"),
            Ok(Target::Zone(ZoneId::stream("s")))
        );
        for version in ["99", "3", "09", "+9", "x", ""] {
            assert_eq!(
                route(&format!("{version}/http/keyvals/")),
                Err(Error::UnknownVersion)
            );
        }
        for path in [
            "9/nosuch",
            "9/http/nosuch",
            "9/tcp/keyvals/",
            "9/http/keyvals/a/b",
            "9/http/keyvals/a/",
        ] {
            assert_eq!(route(path), Err(Error::PathNotFound), "{path}");
        }
    }
}
