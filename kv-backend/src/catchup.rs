//! Catch-up endpoints (docs/protocol.md, "Catch-up"): the primary serves its
//! log (`GET /replikv/log`) and a snapshot (`GET /replikv/snapshot`); a replica
//! applies a log batch (`POST /replikv/apply`) or replaces everything with a
//! snapshot (`PUT /replikv/snapshot`). The two writes carry the shadow-write
//! headers (their proof is checked by the replica's filter) and answer like a
//! shadow write: 204 applied, 200 nothing new, 409 gap or other history, with
//! the node's position in `x-replikv-history` and `x-replikv-seq`.

use axum::extract::{Request, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::api::{json, read_body, shadow_response};
use crate::apply::WriteOp;
use crate::error::{Error, Result};
use crate::replication::{self, LogBatch, ShadowMeta, Snapshot};
use crate::server::AppState;
use crate::writer::now_ms;

/// Entries per `GET /replikv/log` answer when `limit` is not given.
pub const DEFAULT_LOG_LIMIT: usize = 1000;

/// Most entries one `GET /replikv/log` answer carries.
pub const MAX_LOG_LIMIT: usize = 10_000;

/// `GET /replikv/log?after=N[&limit=M]`: `{"history", "entries": [{"seq",
/// "applied_at", "zone", "effects"}]}`, or 410 `ReplicationLogTruncated`.
pub async fn log(State(state): State<AppState>, request: Request) -> Result<Response> {
    let (after, limit) = log_arguments(request.uri().query())?;
    let store = state.store.clone();
    let batch = tokio::task::spawn_blocking(move || store.read_log(after, limit))
        .await
        .map_err(|_| Error::Storage)??;
    Ok(json(&batch))
}

fn log_arguments(query: Option<&str>) -> Result<(u64, usize)> {
    let mut after = None;
    let mut limit = DEFAULT_LOG_LIMIT;
    for part in query.unwrap_or_default().split('&') {
        if let Some(value) = part.strip_prefix("after=") {
            after = Some(
                value
                    .parse::<u64>()
                    .map_err(|_| Error::Catchup("invalid after argument"))?,
            );
        } else if let Some(value) = part.strip_prefix("limit=") {
            limit = value
                .parse::<usize>()
                .ok()
                .filter(|l| (1..=MAX_LOG_LIMIT).contains(l))
                .ok_or(Error::Catchup("invalid limit argument (1 to 10000)"))?;
        }
    }
    let after = after.ok_or(Error::Catchup("after argument required"))?;
    Ok((after, limit))
}

/// `GET /replikv/snapshot`: every zone's live entries with expiry instants.
pub async fn snapshot(State(state): State<AppState>) -> Response {
    json(&state.store.snapshot(now_ms()))
}

/// `POST /replikv/apply`: a log batch from the primary.
pub async fn apply(State(state): State<AppState>, request: Request) -> Response {
    let reply = match decode::<LogBatch>(&state, request).await {
        Ok((shadow, batch)) => {
            if batch.history != shadow.history {
                Err(Error::Catchup(
                    "batch history differs from x-replication-history",
                ))
            } else if batch.entries.last().map(|e| e.seq) != Some(shadow.seq) {
                Err(Error::Catchup(
                    "x-replication-seq is not the seq of the last entry",
                ))
            } else {
                Ok(WriteOp::Replay(batch))
            }
        }
        Err(error) => Err(error),
    };
    answer(&state, reply).await
}

/// `PUT /replikv/snapshot`: replace everything with the primary's snapshot.
pub async fn restore(State(state): State<AppState>, request: Request) -> Response {
    let reply = match decode::<Snapshot>(&state, request).await {
        Ok((shadow, snapshot)) => {
            if snapshot.history != shadow.history || snapshot.seq != shadow.seq {
                Err(Error::Catchup(
                    "snapshot history and seq differ from the replication headers",
                ))
            } else if !replication::is_id(&snapshot.history) {
                Err(Error::Catchup("invalid snapshot history"))
            } else {
                Ok(WriteOp::Restore(snapshot))
            }
        }
        Err(error) => Err(error),
    };
    answer(&state, reply).await
}

/// The replication headers (required) and the JSON body.
async fn decode<T: DeserializeOwned>(
    state: &AppState,
    request: Request,
) -> Result<(ShadowMeta, T)> {
    let shadow = replication::shadow_meta(request.headers())?
        .ok_or(Error::ReplicationHeader(replication::REPLICATION_SEQ))?;
    let (parts, body) = request.into_parts();
    let body = read_body(&parts.headers, body, state.catchup_max_body).await?;
    let value =
        serde_json::from_slice(&body).map_err(|_| Error::Catchup("invalid catch-up body"))?;
    Ok((shadow, value))
}

async fn answer(state: &AppState, op: Result<WriteOp>) -> Response {
    let reply = match op {
        Ok(op) => state.store.write(op).await,
        Err(error) => {
            let (history, seq) = state
                .store
                .read(|data| (data.meta.history.clone(), data.meta.seq));
            crate::writer::Reply {
                result: Err(error),
                history,
                seq,
            }
        }
    };
    shadow_response(reply, &Method::PATCH).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_arguments_need_after_and_bound_limit() {
        assert_eq!(log_arguments(Some("after=5")), Ok((5, DEFAULT_LOG_LIMIT)));
        assert_eq!(log_arguments(Some("limit=2&after=0")), Ok((0, 2)));
        for bad in [
            None,
            Some(""),
            Some("after=x"),
            Some("after=1&limit=0"),
            Some("after=1&limit=10001"),
        ] {
            assert!(log_arguments(bad).is_err(), "{bad:?}");
        }
    }
}
