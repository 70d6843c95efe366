//! The HTTP context: turns [`decide`]'s answer into host calls for one request,
//! buffers and verifies shadow writes on a replica, and on the primary copies
//! each write's body as it streams past so that, once the backend answers 2xx,
//! the write can be handed to the root's shipper.

use crate::acks::{self, AckWait};
use crate::config::Role;
use crate::decide::{decide, Decision, RequestView};
use crate::error_body::{self, REPLICATION_ACK_INVALID, REPLICATION_FORBIDDEN, REPLICATION_REPLAY};
use crate::metrics;
use crate::proof::{self, Proof, ProofError};
use crate::replay::{self, Kind, Verdict};
use crate::root::{now_ms, published_view, random_bytes, shared_get, shared_set, Shared, SEEN_KEY};
use crate::shipper::ShadowWrite;
use crate::status;
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
        /// Replica acknowledgements to wait for before answering.
        wait: Option<AckWait>,
    },
    /// Primary: the response is held until enough replicas applied the write;
    /// the root resumes it or answers 504 itself.
    AwaitingAcks,
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
        self.refuse(shared, &reason.to_string(), REPLICATION_FORBIDDEN)
    }

    /// Answers 403 with `code`, counted as a refused forgery.
    fn refuse(&mut self, shared: &Shared, text: &str, code: &str) -> Action {
        metrics::add(shared.metrics.forged_rejected, 1);
        log::info!(
            "replikv: replication request refused (context {}): {code}: {text}",
            self.context_id
        );
        self.local_error(403, text, code)
    }

    /// Answers `status` with the NGINX error body; nothing goes upstream.
    fn local_error(&mut self, status: u32, text: &str, code: &str) -> Action {
        let request_id = error_body::request_id(
            header_value(MapType::HttpRequestHeaders, "x-request-id").as_deref(),
            random_bytes::<16>(),
        );
        let status16 = u16::try_from(status).unwrap_or(500);
        let body = error_body::render(status16, text, code, &request_id);
        self.state = State::LocalReply;
        let _ = hostcalls::send_http_response(
            status,
            vec![("content-type", "application/json")],
            Some(body.as_bytes()),
        );
        Action::Pause
    }

    /// `GET /replikv/replication`: the latest published view and the counters.
    fn serve_status(&mut self, shared: &Shared) -> Action {
        let role = match shared.config.role {
            Role::Primary => "primary",
            Role::Replica => "replica",
        };
        let body = status::render(published_view(), role, &metrics::counter_values(), now_ms());
        self.state = State::LocalReply;
        let _ = hostcalls::send_http_response(
            200,
            vec![
                ("content-type", "application/json"),
                ("cache-control", "no-store"),
            ],
            Some(body.as_bytes()),
        );
        Action::Pause
    }

    /// Replica: refuses a verified request seen before with a timestamp not
    /// newer (a replay), else records it. `Err` carries the 403 text.
    fn check_replay(path: &str, proof: &Proof) -> Result<(), String> {
        let key = replay::slot_key(Kind::of_path(path), proof.seq);
        for _ in 0..8 {
            let (value, cas) = shared_get(&key);
            match replay::judge(value.as_deref(), proof.seq, proof.timestamp) {
                Verdict::Replay { accepted_ms } => {
                    return Err(format!(
                        "replication request for seq {} replayed: a request signed at {} ms was already accepted (signed at {accepted_ms} ms)",
                        proof.seq, proof.timestamp
                    ))
                }
                Verdict::AcceptUntracked => return Ok(()),
                Verdict::Accept { value } => match shared_set(&key, &value, cas) {
                    Ok(true) => return Ok(()),
                    Ok(false) => continue,
                    Err(status) => {
                        log::warn!("replikv: replay slot {key} not writable: {status:?}");
                        return Ok(());
                    }
                },
            }
        }
        log::warn!(
            "replikv: replay slot {key} kept changing; accepting seq {}",
            proof.seq
        );
        Ok(())
    }

    /// Replica: remembers the highest seq the primary has shown, for the lag.
    fn note_seen(proof: &Proof) {
        for _ in 0..4 {
            let (value, cas) = shared_get(SEEN_KEY);
            let current = value.as_deref().and_then(status::decode_seen);
            let Some(new) = status::raise_seen(current, proof.seq, proof.applied_at) else {
                return;
            };
            if !matches!(shared_set(SEEN_KEY, &new, cas), Ok(false)) {
                return;
            }
        }
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
            Ok(()) => match Self::check_replay(path, proof) {
                Ok(()) => {
                    Self::note_seen(proof);
                    self.state = State::Pass;
                    Action::Continue
                }
                Err(text) => {
                    metrics::add(shared.metrics.replay_rejected, 1);
                    self.refuse(&shared, &text, REPLICATION_REPLAY)
                }
            },
            Err(reason) => self.reject(&shared, &reason),
        }
    }

    /// Primary: after a 2xx with the backend's sequence headers, queue the
    /// write for every replica and wake the root. Returns the write's seq and
    /// the acknowledgements to wait for, if any.
    fn ship(&mut self, shared: &Shared) -> Option<(u64, AckWait)> {
        let State::Capture {
            method,
            path,
            content_type,
            body,
            oversized,
            wait,
        } = std::mem::replace(&mut self.state, State::Pass)
        else {
            return None;
        };
        let status = header_value(MapType::HttpResponseHeaders, ":status")
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(0);
        if !(200..300).contains(&status) || shared.config.replicas.is_empty() {
            return None;
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
            return None;
        };
        let wait = wait.filter(|w| w.k > 0).map(|w| (seq, w));
        if oversized {
            log::warn!("replikv: write seq={seq} has a body over max_queue_bytes; dropped for every replica");
            metrics::add(
                shared.metrics.shadow_dropped,
                i64::try_from(shared.config.replicas.len()).unwrap_or(1),
            );
            return wait;
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
        let enqueued = match shared.shipper.try_borrow_mut() {
            Ok(mut shipper) => shipper.enqueue(write, now_ms()),
            Err(_) => Default::default(),
        };
        if enqueued.dropped > 0 {
            log::warn!(
                "replikv: shadow queue full: dropped {} queued writes (catch-up sends them from the log)",
                enqueued.dropped
            );
            metrics::add(
                shared.metrics.shadow_dropped,
                i64::try_from(enqueued.dropped).unwrap_or(1),
            );
        }
        metrics::add(
            shared.metrics.shadow_deferred,
            i64::try_from(enqueued.deferred).unwrap_or(0),
        );
        shared.sync_queued_gauge();
        shared.wake_root();
        wait
    }
}

impl Context for Http {
    fn on_done(&mut self) -> bool {
        if matches!(self.state, State::AwaitingAcks) {
            if let Some(shared) = &self.shared {
                if let Ok(mut book) = shared.acks.try_borrow_mut() {
                    book.cancel(self.context_id);
                }
            }
        }
        true
    }
}

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
                    let config = &shared.config;
                    let wait = match acks::requested(
                        config.min_replica_acks,
                        config.replica_ack_timeout_ms,
                        config.replicas.len(),
                        &headers,
                    ) {
                        Ok(wait) => wait,
                        Err(text) => {
                            return self.local_error(400, &text, REPLICATION_ACK_INVALID);
                        }
                    };
                    self.state = State::Capture {
                        content_type: header(&headers, "content-type").map(str::to_owned),
                        method,
                        path,
                        body: Vec::new(),
                        oversized: false,
                        wait: Some(wait),
                    };
                }
                Action::Continue
            }
            Decision::Forbidden { text } => self.refuse(&shared, text, REPLICATION_FORBIDDEN),
            Decision::ServeStatus => self.serve_status(&shared),
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
            State::Pass | State::LocalReply | State::AwaitingAcks => Action::Continue,
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
            if let Some((seq, wait)) = self.ship(&shared) {
                if let Ok(mut book) = shared.acks.try_borrow_mut() {
                    book.wait(self.context_id, seq, wait, now_ms());
                    self.state = State::AwaitingAcks;
                    shared.wake_root();
                    return Action::Pause;
                }
            }
        }
        Action::Continue
    }
}
