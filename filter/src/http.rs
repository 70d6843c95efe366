//! The HTTP context: turns [`decide`]'s answer into host calls for one request,
//! buffers and verifies shadow writes on a replica, and on the primary copies
//! each write's body as it streams past so that, once the backend answers 2xx,
//! the write can be handed to the root's shipper.

use crate::config::Role;
use crate::decide::{decide, Decision, RequestView};
use crate::error_body::{self, REPLICATION_FORBIDDEN};
use crate::metrics;
use crate::proof::{self, Proof, ProofError};
use crate::root::{now_ms, random_bytes, Shared};
use crate::shipper::ShadowWrite;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};
use std::rc::Rc;

/// Where one request stands.
enum State {
    /// Nothing more to do for this request.
    Pass,
    /// Primary: a client write whose body is being copied; replicated if the
    /// backend applies it.
    Capture {
        method: String,
        path: String,
        content_type: Option<String>,
        body: Vec<u8>,
        /// The body outgrew `max_queue_bytes`: it could never be queued.
        oversized: bool,
    },
    /// Replica: a shadow write held until its whole body is there.
    Verify {
        method: String,
        path: String,
        proof: Proof,
    },
    /// This filter answered the request itself (307 or 403); its own reply
    /// passes back through the response callbacks and must be left alone.
    LocalReply,
}

pub(crate) struct Http {
    context_id: u32,
    shared: Option<Rc<Shared>>,
    state: State,
}

/// Request headers with values decoded leniently: a non-UTF-8 value must not
/// trap the VM (the SDK's `get_map` would), and it can never be a valid proof.
fn request_headers() -> Vec<(String, String)> {
    hostcalls::get_map_bytes(MapType::HttpRequestHeaders)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect()
}

fn header_value(map: MapType, name: &str) -> Option<String> {
    hostcalls::get_map_value_bytes(map, name)
        .ok()
        .flatten()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn request_body(size: usize) -> Vec<u8> {
    if size == 0 {
        return Vec::new();
    }
    hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size)
        .ok()
        .flatten()
        .unwrap_or_default()
}

impl Http {
    pub(crate) fn new(context_id: u32, shared: Option<Rc<Shared>>) -> Self {
        Http {
            context_id,
            shared,
            state: State::Pass,
        }
    }

    fn reject(&mut self, shared: &Shared, reason: &ProofError) -> Action {
        metrics::add(shared.metrics.forged_rejected, 1);
        log::info!(
            "replikv: replication request refused (context {}): {reason}",
            self.context_id
        );
        let request_id = error_body::request_id(
            header_value(MapType::HttpRequestHeaders, "x-request-id").as_deref(),
            random_bytes::<16>(),
        );
        let body = error_body::render(403, &reason.to_string(), REPLICATION_FORBIDDEN, &request_id);
        self.state = State::LocalReply;
        let _ = hostcalls::send_http_response(
            403,
            vec![("content-type", "application/json")],
            Some(body.as_bytes()),
        );
        Action::Pause
    }

    /// Checks a held shadow write against its complete body: on to the backend
    /// with its headers, or 403.
    fn finish_verify(&mut self, body: &[u8]) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        let State::Verify {
            method,
            path,
            proof,
        } = &self.state
        else {
            return Action::Continue;
        };
        match proof.verify(&shared.config.secret, method, path, body) {
            Ok(()) => {
                self.state = State::Pass;
                Action::Continue
            }
            Err(reason) => self.reject(&shared, &reason),
        }
    }

    /// Primary: after a 2xx with the backend's sequence headers, queue the
    /// write for every replica and wake the root.
    fn ship(&mut self, shared: &Shared) {
        let State::Capture {
            method,
            path,
            content_type,
            body,
            oversized,
        } = std::mem::replace(&mut self.state, State::Pass)
        else {
            return;
        };
        let status = header_value(MapType::HttpResponseHeaders, ":status")
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(0);
        if !(200..300).contains(&status) || shared.config.replicas.is_empty() {
            return;
        }
        let history = header_value(MapType::HttpResponseHeaders, "x-replikv-history");
        let seq = header_value(MapType::HttpResponseHeaders, "x-replikv-seq");
        let applied_at = header_value(MapType::HttpResponseHeaders, "x-replikv-applied-at");
        let (Some(history), Some(seq), Some(applied_at)) = (
            history.filter(|h| proof::is_history_id(h)),
            seq.as_deref().and_then(proof::parse_decimal),
            applied_at.as_deref().and_then(proof::parse_decimal),
        ) else {
            log::warn!(
                "replikv: {method} {path} answered {status} without valid x-replikv-history/seq/applied-at; not replicated"
            );
            return;
        };
        if oversized {
            log::warn!("replikv: write seq={seq} has a body over max_queue_bytes; dropped for every replica");
            metrics::add(
                shared.metrics.shadow_dropped,
                i64::try_from(shared.config.replicas.len()).unwrap_or(1),
            );
            return;
        }
        let write = ShadowWrite {
            method,
            path,
            content_type,
            body: Rc::from(body),
            history,
            seq,
            applied_at,
        };
        let dropped = match shared.shipper.try_borrow_mut() {
            Ok(mut shipper) => shipper.enqueue(write),
            Err(_) => 0,
        };
        if dropped > 0 {
            log::warn!("replikv: shadow queue full: dropped {dropped} queued writes");
            metrics::add(
                shared.metrics.shadow_dropped,
                i64::try_from(dropped).unwrap_or(1),
            );
        }
        shared.sync_queued_gauge();
        shared.wake_root();
    }
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        let headers = request_headers();
        let method = header(&headers, ":method").unwrap_or_default().to_owned();
        let path = header(&headers, ":path").unwrap_or_default().to_owned();
        let view = RequestView {
            method: &method,
            path: &path,
            headers: &headers,
            now_ms: now_ms(),
        };
        match decide(&shared.config, &view) {
            Decision::Forward { strip, shadow } => {
                if !strip.is_empty() {
                    metrics::add(shared.metrics.stripped_headers, 1);
                    for name in &strip {
                        let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
                    }
                }
                if shadow && shared.config.role == Role::Primary {
                    self.state = State::Capture {
                        content_type: header(&headers, "content-type").map(str::to_owned),
                        method,
                        path,
                        body: Vec::new(),
                        oversized: false,
                    };
                }
                Action::Continue
            }
            Decision::Redirect307 { location } => {
                metrics::add(shared.metrics.redirected, 1);
                self.state = State::LocalReply;
                let _ = hostcalls::send_http_response(307, vec![("location", &location)], None);
                Action::Pause
            }
            Decision::Reject403 { reason } => self.reject(&shared, &reason),
            Decision::VerifyReplication { proof } => {
                self.state = State::Verify {
                    method,
                    path,
                    proof,
                };
                if end_of_stream {
                    self.finish_verify(&[])
                } else {
                    // With `allow_on_headers_stop_iteration: true` Envoy stops
                    // only the headers, so the body callbacks still arrive.
                    Action::Pause
                }
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        match &mut self.state {
            State::Capture {
                body, oversized, ..
            } => {
                // Not buffering: the host buffer holds just this chunk.
                if !*oversized {
                    if body.len() + body_size > shared.config.max_queue_bytes {
                        *oversized = true;
                        *body = Vec::new();
                    } else {
                        body.extend_from_slice(&request_body(body_size));
                    }
                }
                Action::Continue
            }
            State::Verify { .. } if end_of_stream => {
                // Buffering: the host buffer holds the whole body so far.
                let body = request_body(body_size);
                self.finish_verify(&body)
            }
            State::Verify { .. } => Action::Pause,
            State::Pass | State::LocalReply => Action::Continue,
        }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if matches!(self.state, State::Verify { .. }) {
            // The body is complete and still buffered; the host clamps the
            // length to what the buffer holds.
            let body = request_body(usize::MAX);
            return self.finish_verify(&body);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let (State::Capture { .. }, Some(shared)) = (&self.state, self.shared.clone()) {
            self.ship(&shared);
        }
        Action::Continue
    }
}
