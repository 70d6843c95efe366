//! The one error type of the backend and its one mapping to HTTP.
//!
//! Every failure a request can meet is a variant of [`Error`]. Handlers return
//! it; [`Error::into_response`] stashes it in the response extensions and the
//! `render_errors` middleware in `server.rs` turns it into the NGINX error body,
//! because only the middleware knows the request id.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Where every NGINX API error points its readers.
pub const ERROR_HREF: &str = "https://nginx.org/en/docs/http/ngx_http_api_module.html";

/// Texts of 400 `KeyvalFormatError`, kept in one place so tests and clients agree.
pub mod format {
    /// The body is not a JSON object (or not JSON at all).
    pub const INVALID_JSON: &str = "invalid JSON";
    /// The body is not UTF-8.
    pub const INVALID_UTF8: &str = "invalid UTF-8 in request body";
    /// A key is empty, or the object has no key at all.
    pub const KEY_REQUIRED: &str = "key required";
    /// A key is not valid for the zone's type (ip), or contains NUL.
    pub const INVALID_KEY: &str = "invalid key format";
    /// `expire` was given for a zone configured without `timeout`.
    pub const TIMEOUT_NOT_ENABLED: &str = "keyval timeout is not enabled";
    /// A POST with several pairs into a zone that is not empty.
    pub const ONLY_ONE_ADDED: &str = "only one key can be added";
    /// A PATCH with several pairs.
    pub const ONLY_ONE_UPDATED: &str = "only one key can be updated";
    /// A value that is an array, an object without `value`, or null in a POST.
    pub const INVALID_VALUE: &str = "invalid value";
    /// An `expire` that is not an integer number of milliseconds in range.
    pub const INVALID_EXPIRE: &str = "invalid expire";
    /// The same key twice in one object.
    pub const DUPLICATE_KEY: &str = "duplicate key";
    /// A `?key=` argument that is not valid percent-encoded UTF-8.
    pub const INVALID_ARGUMENT: &str = "invalid key argument";
}

/// Everything that can go wrong while answering a request.
///
/// Internal failures carry no details: they are logged once where they happen
/// (the writer) and answered with a fixed text, so nothing internal leaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The version segment of `/api/{v}/` is not one we serve.
    #[error("unknown version")]
    UnknownVersion,
    /// No endpoint at this path.
    #[error("path not found")]
    PathNotFound,
    /// The method is not allowed on this endpoint.
    #[error("method disabled")]
    MethodDisabled,
    /// The zone is not configured.
    #[error("keyval \"{0}\" not found")]
    ZoneNotFound(String),
    /// The key is absent (or expired).
    #[error("key \"{0}\" not found")]
    KeyNotFound(String),
    /// A POST of a key that is already present.
    #[error("key \"{0}\" already exists")]
    KeyExists(String),
    /// A malformed body or argument; the text is one of [`format`].
    #[error("{0}")]
    Format(&'static str),
    /// The body is larger than `--max-body`.
    #[error("request entity too large")]
    BodyTooLarge,
    /// The client stopped sending the body or sent a broken one.
    #[error("failed to read request body")]
    BodyRead,
    /// The write would take the zone over its configured size.
    #[error("keyval zone \"{0}\" is full")]
    ZoneFull(String),
    /// A shadow write arrived with `seq > applied + 1`.
    #[error("replication gap: applied seq {applied}, received seq {received}")]
    ReplicationGap { applied: u64, received: u64 },
    /// A shadow write of another history than the one this node follows.
    #[error("replication history mismatch: following {local}, received {received}")]
    ReplicationHistoryMismatch { local: String, received: String },
    /// The `x-replication-*` headers of a shadow write are missing or malformed.
    #[error("invalid replication header \"{0}\"")]
    ReplicationHeader(&'static str),
    /// A catch-up request (log batch, snapshot, `after`/`limit`) is malformed.
    #[error("{0}")]
    Catchup(&'static str),
    /// The log no longer reaches back to the entry after `after`.
    #[error("replication log starts at seq {first}, entries after {after} are gone")]
    LogTruncated { after: u64, first: u64 },
    /// The durable store failed; the write was not applied.
    #[error("internal storage error")]
    Storage,
    /// The writer is gone (the server is shutting down).
    #[error("service unavailable")]
    Unavailable,
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::UnknownVersion
            | Error::PathNotFound
            | Error::ZoneNotFound(_)
            | Error::KeyNotFound(_) => StatusCode::NOT_FOUND,
            Error::MethodDisabled => StatusCode::METHOD_NOT_ALLOWED,
            Error::KeyExists(_)
            | Error::ReplicationGap { .. }
            | Error::ReplicationHistoryMismatch { .. } => StatusCode::CONFLICT,
            Error::Format(_)
            | Error::BodyRead
            | Error::ReplicationHeader(_)
            | Error::Catchup(_) => StatusCode::BAD_REQUEST,
            Error::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Error::LogTruncated { .. } => StatusCode::GONE,
            Error::ZoneFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            Error::Storage => StatusCode::INTERNAL_SERVER_ERROR,
            Error::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The NGINX `error.code` string.
    pub fn code(&self) -> &'static str {
        match self {
            Error::UnknownVersion => "UnknownVersion",
            Error::PathNotFound => "PathNotFound",
            Error::MethodDisabled => "MethodDisabled",
            Error::ZoneNotFound(_) => "KeyvalNotFound",
            Error::KeyNotFound(_) => "KeyvalKeyNotFound",
            Error::KeyExists(_) => "KeyvalKeyExists",
            Error::Format(_) => "KeyvalFormatError",
            Error::BodyTooLarge => "RequestEntityTooLarge",
            Error::BodyRead => "BodyReadError",
            Error::ZoneFull(_) => "KeyvalZoneFull",
            Error::ReplicationGap { .. } => "ReplicationGap",
            Error::ReplicationHistoryMismatch { .. } => "ReplicationHistoryMismatch",
            Error::ReplicationHeader(_) => "ReplicationHeaderInvalid",
            Error::Catchup(_) => "ReplicationFormatError",
            Error::LogTruncated { .. } => "ReplicationLogTruncated",
            Error::Storage => "InternalError",
            Error::Unavailable => "ServiceUnavailable",
        }
    }

    /// Whether this is the server's fault (logged as an error) rather than the client's.
    pub fn is_internal(&self) -> bool {
        self.status().is_server_error() && !matches!(self, Error::ZoneFull(_))
    }

    /// The JSON body NGINX answers errors with.
    pub fn body(&self, request_id: &str) -> String {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
            request_id: &'a str,
            href: &'static str,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            status: u16,
            text: &'a str,
            code: &'static str,
        }
        let text = self.to_string();
        let body = Body {
            error: Inner {
                status: self.status().as_u16(),
                text: &text,
                code: self.code(),
            },
            request_id,
            href: ERROR_HREF,
        };
        // Serializing plain strings and integers cannot fail; the fallback keeps
        // the request path free of panics all the same.
        serde_json::to_string(&body).unwrap_or_else(|_| String::from("{}"))
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut response = self.status().into_response();
        response.extensions_mut().insert(self);
        response
    }
}
