//! The root context: validates the configuration, owns the shadow-write
//! [`Shipper`] of this VM, and is the only place that dispatches shadow writes,
//! because a callout's reply goes back to the context that made it and an HTTP
//! stream may be gone by then.
//!
//! HTTP contexts hand a write to the shipper (same VM, same thread, shared
//! through `Rc`) and wake the root through a shared queue registered under a
//! name unique to this VM; the root's `on_queue_ready` dispatches. A tick, fast
//! while work is pending and slow otherwise, drives retries, backoff and the
//! timeouts of lost replies.
//!
//! One VM per Envoy process holds the catch-up lease (a compare-and-swap entry
//! in shared data renewed every few hundred ms); its root also runs
//! [`Catchup`]: probes, log batches and snapshots, and publishes the node's
//! replication view for `GET /replikv/replication` and the lag gauges. Every
//! root resolves the K-acknowledgement waiters of its own HTTP contexts.

use crate::acks::{self, AckBook, Resolution};
use crate::catchup::{self, Call, Catchup, Position, Reply};
use crate::config::{Config, Role};
use crate::error_body;
use crate::http::Http;
use crate::metrics::{self, Metrics};
use crate::proof::{self, SignedFields};
use crate::shipper::{Attempt, Event, Outcome, Send, ShadowWrite, Shipper};
use crate::status::{self, View};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MapType, Status};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

/// Tick period while shadow writes, catch-up calls or acknowledgement waiters
/// are pending: the resolution of retry backoff and of ack timeouts.
const BUSY_TICK: Duration = Duration::from_millis(10);

/// Tick period otherwise: lease renewal and probe scheduling.
const IDLE_TICK: Duration = Duration::from_millis(200);

/// How long a root being shut down (config change, listener drain) keeps
/// delivering queued writes before it lets Envoy delete it.
const DRAIN_GRACE_MS: u64 = 10_000;

/// Shared-data key of the catch-up lease: `{token}:{expires_ms}`.
const LEASE_KEY: &str = "replikv.leader";
/// How long a lease lasts without renewal.
const LEASE_MS: u64 = 3_000;
/// Renew when less than this is left.
const LEASE_RENEW_MS: u64 = 2_000;
/// Shared-data key of the node's latest [`View`] (JSON).
pub(crate) const VIEW_KEY: &str = "replikv.view";
/// Shared-data key of a replica's highest seen seq: `{seq}:{applied_at}`.
pub(crate) const SEEN_KEY: &str = "replikv.seen";

/// State shared by the root and the HTTP contexts it creates.
pub(crate) struct Shared {
    pub config: Config,
    pub shipper: RefCell<Shipper>,
    pub acks: RefCell<AckBook>,
    pub metrics: Metrics,
    /// The shared queue that wakes the root, if Envoy let us register one.
    pub wake_queue: Option<u32>,
    /// The value last added to the `replikv.shadow.queued` gauge by this VM.
    reported_queued: Cell<usize>,
}

impl Shared {
    /// Brings this VM's share of the process-wide queued gauge up to date.
    pub(crate) fn sync_queued_gauge(&self) {
        let Ok(shipper) = self.shipper.try_borrow() else {
            return;
        };
        let now = shipper.queued();
        let before = self.reported_queued.replace(now);
        let delta =
            i64::try_from(now).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(i64::MAX);
        metrics::add(self.metrics.shadow_queued, delta);
    }

    /// Takes this VM's share out of the gauge, when its root goes away.
    pub(crate) fn clear_queued_gauge(&self) {
        let before = self.reported_queued.replace(0);
        metrics::add(
            self.metrics.shadow_queued,
            -i64::try_from(before).unwrap_or(i64::MAX),
        );
    }

    /// Asks the root to dispatch soon.
    pub(crate) fn wake_root(&self) {
        if let Some(queue) = self.wake_queue {
            if let Err(status) = hostcalls::enqueue_shared_queue(queue, Some(b"w")) {
                log::warn!(
                    "replikv: cannot wake the shipper ({status:?}); the next tick will send"
                );
            }
        }
    }
}

/// Unix time in ms by the host's wall clock (0 if the host cannot tell).
pub(crate) fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `N` random bytes from WASI, or from the clock if WASI has none.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    if getrandom::getrandom(&mut buf).is_err() {
        let seed = hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        for (i, b) in buf.iter_mut().enumerate() {
            *b = seed
                .rotate_left(u32::try_from(i * 7).unwrap_or(0))
                .to_le_bytes()[0]
                ^ (i as u8);
        }
    }
    buf
}

/// Reads a shared-data entry: its value and CAS token.
pub(crate) fn shared_get(key: &str) -> (Option<Vec<u8>>, Option<u32>) {
    hostcalls::get_shared_data(key).unwrap_or((None, None))
}

/// Writes a shared-data entry; `Ok(false)` on a CAS mismatch.
pub(crate) fn shared_set(key: &str, value: &[u8], cas: Option<u32>) -> Result<bool, Status> {
    match hostcalls::set_shared_data(key, Some(value), cas) {
        Ok(()) => Ok(true),
        Err(Status::CasMismatch) => Ok(false),
        Err(status) => Err(status),
    }
}

/// The latest published view of this node, if any.
pub(crate) fn published_view() -> Option<View> {
    let (value, _) = shared_get(VIEW_KEY);
    serde_json::from_slice(&value?).ok()
}

/// What a callout token stands for.
enum Pending {
    /// A shadow write or batch attempt of the shipper; `history` of the
    /// write or batch.
    Shadow { attempt: u64, history: String },
    /// The log read of a shipper batch (local backend).
    ShadowLog { attempt: u64 },
    /// A catch-up call.
    Catchup { id: u64 },
}

/// The plugin's root context.
#[derive(Default)]
pub(crate) struct Root {
    shared: Option<Rc<Shared>>,
    catchup: Option<Catchup>,
    /// Callout token → what it was for.
    in_flight: HashMap<u32, Pending>,
    tick: Option<Duration>,
    /// Set when Envoy asked this root to finish: the time by which it gives up.
    draining_until: Option<u64>,
    /// This root's name in the catch-up lease.
    token: String,
    /// Until when this root holds the lease (0: it does not).
    lease_until: u64,
    next_lease_check: u64,
}

impl Root {
    fn configure(&mut self) -> bool {
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let config = match Config::parse(&bytes, |k| std::env::var(k).ok()) {
            Ok(config) => config,
            Err(e) => {
                log::error!("replikv: plugin configuration refused: {e}");
                return false;
            }
        };
        let metrics = Metrics::define(&config.replicas);
        self.token = proof::hex_lower(&random_bytes::<8>());
        let name = format!("replikv.shipper.{}", self.token);
        let wake_queue = match hostcalls::register_shared_queue(&name) {
            Ok(id) => Some(id),
            Err(status) => {
                log::warn!("replikv: cannot register shared queue {name} ({status:?}); shipping on ticks only");
                None
            }
        };
        log::info!(
            "replikv: configured as {:?}, replicas {:?}, wake queue {name}",
            config.role,
            config.replicas
        );
        let shipper = Shipper::new(
            &config.replicas,
            config.max_queue_bytes,
            config.retry_backoff,
            config.shadow_timeout_ms,
            config.detach_after_ms,
            u64::from(config.catchup_batch),
        );
        self.catchup = Some(Catchup::new(
            config.replicas.len(),
            config.probe_interval_ms,
            config.shadow_timeout_ms,
            config.catchup_batch,
        ));
        self.shared = Some(Rc::new(Shared {
            config,
            shipper: RefCell::new(shipper),
            acks: RefCell::new(AckBook::default()),
            metrics,
            wake_queue,
            reported_queued: Cell::new(0),
        }));
        self.set_tick(IDLE_TICK);
        true
    }

    fn set_tick(&mut self, period: Duration) {
        if self.tick != Some(period) && hostcalls::set_tick_period(period).is_ok() {
            self.tick = Some(period);
        }
    }

    fn is_leader(&self, now: u64) -> bool {
        self.lease_until > now
    }

    /// Takes or renews the catch-up lease when it is free, expired or ours.
    fn check_lease(&mut self, now: u64) {
        if now < self.next_lease_check || self.draining_until.is_some() {
            return;
        }
        self.next_lease_check = now.saturating_add(200);
        if self.lease_until > now.saturating_add(LEASE_MS - LEASE_RENEW_MS) {
            return;
        }
        let (value, cas) = shared_get(LEASE_KEY);
        let holder = value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.split_once(':'))
            .map(|(t, e)| (t.to_owned(), e.parse::<u64>().unwrap_or(0)));
        let free = match &holder {
            None => true,
            Some((token, expires)) => *token == self.token || *expires <= now,
        };
        if !free {
            self.lease_until = 0;
            return;
        }
        let until = now.saturating_add(LEASE_MS);
        let value = format!("{}:{until}", self.token);
        match shared_set(LEASE_KEY, value.as_bytes(), cas) {
            Ok(true) => {
                if self.lease_until <= now {
                    log::info!("replikv: this VM now runs catch-up and status probes");
                }
                self.lease_until = until;
            }
            Ok(false) => self.lease_until = 0,
            Err(status) => {
                log::warn!("replikv: cannot take the catch-up lease: {status:?}");
                self.lease_until = 0;
            }
        }
    }

    fn release_lease(&mut self) {
        if self.lease_until == 0 {
            return;
        }
        let (value, cas) = shared_get(LEASE_KEY);
        let ours = value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
            .is_some_and(|v| v.starts_with(&format!("{}:", self.token)));
        if ours {
            let _ = shared_set(LEASE_KEY, b"-:0", cas);
        }
        self.lease_until = 0;
    }

    /// Expires overdue attempts, dispatches what is due, runs catch-up when
    /// leading, resolves ack waiters, and adjusts the tick.
    fn pump(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let now = now_ms();
        let (expired, attempts) = match shared.shipper.try_borrow_mut() {
            Ok(mut shipper) => (shipper.expire(now), shipper.poll(now)),
            Err(_) => return,
        };
        for event in &expired {
            self.record(&shared, event, now);
        }
        for attempt in attempts {
            self.dispatch(&shared, &attempt, now);
        }
        shared.sync_queued_gauge();

        self.check_lease(now);
        if self.is_leader(now) {
            if let Some(catchup) = self.catchup.as_mut() {
                let (calls, events) = catchup.poll(now);
                self.catchup_events(&shared, &events);
                for (id, call) in calls {
                    self.dispatch_call(&shared, id, &call, now);
                }
            }
        }
        self.resolve_acks(&shared, now);

        let busy = shared.shipper.try_borrow().map_or(true, |s| s.is_busy());
        if let Some(deadline) = self.draining_until {
            if !busy || now >= deadline {
                if busy {
                    log::warn!(
                        "replikv: shutting down with {} shadow writes undelivered (the log has them)",
                        shared.shipper.try_borrow().map_or(0, |s| s.queued())
                    );
                }
                self.draining_until = None;
                shared.clear_queued_gauge();
                let _ = hostcalls::done();
                return;
            }
        }
        let waiting = !shared.acks.try_borrow().map_or(true, |a| a.is_empty());
        let catching_up = self.is_leader(now) && self.catchup.as_ref().is_some_and(|c| c.is_busy());
        self.set_tick(if busy || waiting || catching_up {
            BUSY_TICK
        } else {
            IDLE_TICK
        });
    }

    /// Each replica's highest known seq in this primary's history: from this
    /// VM's shipper and from the published view (catch-up, other workers).
    fn confirmed(&self, shared: &Shared) -> Vec<u64> {
        let view = published_view();
        shared
            .config
            .replicas
            .iter()
            .map(|name| {
                let own = shared.shipper.try_borrow().map_or(0, |s| s.confirmed(name));
                let seen = view
                    .as_ref()
                    .and_then(|v| {
                        let r = v.replicas.iter().find(|r| r.name == *name)?;
                        (r.history.is_some() && r.history == v.history).then_some(r.seq?)
                    })
                    .unwrap_or(0);
                own.max(seen)
            })
            .collect()
    }

    fn resolve_acks(&self, shared: &Shared, now: u64) {
        if shared.acks.try_borrow().map_or(true, |a| a.is_empty()) {
            return;
        }
        let confirmed = self.confirmed(shared);
        let resolutions = match shared.acks.try_borrow_mut() {
            Ok(mut book) => book.resolve(&confirmed, now),
            Err(_) => return,
        };
        for resolution in resolutions {
            match resolution {
                Resolution::Acked { context_id } => {
                    metrics::add(shared.metrics.acks_ok, 1);
                    if hostcalls::set_effective_context(context_id).is_ok() {
                        let _ = hostcalls::resume_http_response();
                    }
                }
                Resolution::TimedOut {
                    context_id,
                    seq,
                    acks: got,
                    k,
                } => {
                    metrics::add(shared.metrics.acks_timeout, 1);
                    log::info!(
                        "replikv: write seq={seq} confirmed by {got} of {k} replicas in time; answering 504"
                    );
                    if hostcalls::set_effective_context(context_id).is_err() {
                        continue;
                    }
                    let text =
                        acks::timeout_text(seq, got, k, shared.config.replica_ack_timeout_ms);
                    let request_id = error_body::request_id(None, random_bytes::<16>());
                    let body = error_body::render(
                        504,
                        &text,
                        error_body::REPLICATION_TIMEOUT,
                        &request_id,
                    );
                    let (seq, got) = (seq.to_string(), got.to_string());
                    let _ = hostcalls::send_http_response(
                        504,
                        vec![
                            ("content-type", "application/json"),
                            ("x-replikv-seq", &seq),
                            ("x-replikv-acks", &got),
                        ],
                        Some(body.as_bytes()),
                    );
                }
            }
        }
    }

    /// Sends one shipper attempt: a shadow write, a batch's log read on the
    /// local backend, or the batch itself. One that cannot be dispatched is
    /// answered "no reply" at once.
    fn dispatch(&mut self, shared: &Shared, attempt: &Attempt, now: u64) {
        let (result, pending) = match &attempt.send {
            Send::Write(w) => (
                self.send_write(shared, attempt, w, now),
                Pending::Shadow {
                    attempt: attempt.id,
                    history: w.history.clone(),
                },
            ),
            Send::FetchLog { after, limit } => {
                let cluster = &shared.config.backend_cluster;
                let path = format!("/replikv/log?after={after}&limit={limit}");
                let result = hostcalls::dispatch_http_call(
                    cluster,
                    vec![
                        (":method", "GET"),
                        (":path", &path),
                        (":authority", cluster),
                    ],
                    None,
                    vec![],
                    Duration::from_millis(shared.config.shadow_timeout_ms),
                );
                (
                    result,
                    Pending::ShadowLog {
                        attempt: attempt.id,
                    },
                )
            }
            Send::PushBatch {
                history,
                seq,
                body,
                read_ahead,
            } => {
                metrics::add(shared.metrics.shadow_sent, 1);
                metrics::add(shared.metrics.shadow_batches, 1);
                if *read_ahead {
                    metrics::add(shared.metrics.shadow_read_ahead, 1);
                }
                if attempt.is_retry {
                    metrics::add(shared.metrics.shadow_retried, 1);
                }
                let result = self.signed(
                    shared,
                    &attempt.cluster,
                    "POST",
                    crate::replay::LIVE_BATCH_PATH,
                    history,
                    *seq,
                    body,
                    now,
                );
                (
                    result,
                    Pending::Shadow {
                        attempt: attempt.id,
                        history: history.clone(),
                    },
                )
            }
        };
        match result {
            Ok(token) => {
                self.in_flight.insert(token, pending);
            }
            Err(status) => {
                log::info!(
                    "replikv: shadow {:?} to replica={} not dispatched: {status:?}",
                    Self::describe(&attempt.send),
                    attempt.cluster
                );
                let event = match shared.shipper.try_borrow_mut() {
                    Ok(mut s) => s.on_reply(attempt.id, Outcome::NoReply, now),
                    Err(_) => Event::Stale,
                };
                self.record(shared, &event, now);
            }
        }
    }

    /// A short description of an attempt for log lines.
    fn describe(send: &Send) -> String {
        match send {
            Send::Write(w) => format!("write seq={}", w.seq),
            Send::FetchLog { after, limit } => format!("log read after={after} limit={limit}"),
            Send::PushBatch { seq, .. } => format!("batch to seq={seq}"),
        }
    }

    /// Signs and dispatches one shadow write (the fast path).
    fn send_write(
        &self,
        shared: &Shared,
        attempt: &Attempt,
        w: &ShadowWrite,
        now: u64,
    ) -> Result<u32, Status> {
        let config = &shared.config;
        let (seq, applied_at, timestamp) =
            (w.seq.to_string(), w.applied_at.to_string(), now.to_string());
        let fields = SignedFields {
            method: &w.method,
            path: &w.path,
            history: &w.history,
            seq: w.seq,
            applied_at: w.applied_at,
            timestamp: now,
        };
        let signature = proof::sign(&config.secret, &fields, &w.body).unwrap_or_default();
        let mut headers: Vec<(&str, &str)> = vec![
            (":method", &w.method),
            (":path", &w.path),
            (":authority", &attempt.cluster),
            (config.source_header.as_str(), proof::SOURCE_PRIMARY),
            (proof::HISTORY, &w.history),
            (proof::SEQ, &seq),
            (proof::APPLIED_AT, &applied_at),
            (proof::TIMESTAMP, &timestamp),
            (proof::SIGNATURE, &signature),
        ];
        if let Some(ct) = &w.content_type {
            headers.push(("content-type", ct));
        }
        let body = (!w.body.is_empty()).then_some(&w.body[..]);
        let timeout = Duration::from_millis(config.shadow_timeout_ms);
        metrics::add(shared.metrics.shadow_sent, 1);
        if attempt.is_retry {
            metrics::add(shared.metrics.shadow_retried, 1);
        }
        hostcalls::dispatch_http_call(&attempt.cluster, headers, body, vec![], timeout)
    }

    /// Sends one catch-up call; a call that cannot be dispatched is answered
    /// "no reply" at once.
    fn dispatch_call(&mut self, shared: &Shared, id: u64, call: &Call, now: u64) {
        let config = &shared.config;
        let replica_cluster = |i: usize| config.replicas.get(i).cloned().unwrap_or_default();
        let timeout = Duration::from_millis(config.shadow_timeout_ms);
        let get = |cluster: &str, path: &str| {
            hostcalls::dispatch_http_call(
                cluster,
                vec![(":method", "GET"), (":path", path), (":authority", cluster)],
                None,
                vec![],
                timeout,
            )
        };
        let result = match call {
            Call::LocalStatus => get(&config.backend_cluster, "/replikv/status"),
            Call::ReplicaStatus { replica } => get(&replica_cluster(*replica), "/replikv/status"),
            Call::FetchLog { after, limit, .. } => get(
                &config.backend_cluster,
                &format!("/replikv/log?after={after}&limit={limit}"),
            ),
            Call::FetchSnapshot { .. } => get(&config.backend_cluster, "/replikv/snapshot"),
            Call::PushLog {
                replica,
                history,
                seq,
                body,
            } => self.signed(
                shared,
                &replica_cluster(*replica),
                "POST",
                "/replikv/apply",
                history,
                *seq,
                body,
                now,
            ),
            Call::PushSnapshot {
                replica,
                history,
                seq,
                body,
            } => self.signed(
                shared,
                &replica_cluster(*replica),
                "PUT",
                "/replikv/snapshot",
                history,
                *seq,
                body,
                now,
            ),
        };
        match result {
            Ok(token) => {
                self.in_flight.insert(token, Pending::Catchup { id });
            }
            Err(status) => {
                log::info!("replikv: catch-up call {call:?} not dispatched: {status:?}");
                self.catchup_reply(shared, id, Reply::none(), now);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn signed(
        &self,
        shared: &Shared,
        cluster: &str,
        method: &str,
        path: &str,
        history: &str,
        seq: u64,
        body: &[u8],
        now: u64,
    ) -> Result<u32, Status> {
        let config = &shared.config;
        let fields = SignedFields {
            method,
            path,
            history,
            seq,
            applied_at: 0,
            timestamp: now,
        };
        let signature = proof::sign(&config.secret, &fields, body).unwrap_or_default();
        let (seq, timestamp) = (seq.to_string(), now.to_string());
        let headers = vec![
            (":method", method),
            (":path", path),
            (":authority", cluster),
            (config.source_header.as_str(), proof::SOURCE_PRIMARY),
            (proof::HISTORY, history),
            (proof::SEQ, &seq),
            (proof::APPLIED_AT, "0"),
            (proof::TIMESTAMP, &timestamp),
            (proof::SIGNATURE, &signature),
            ("content-type", "application/json"),
        ];
        hostcalls::dispatch_http_call(
            cluster,
            headers,
            Some(body),
            vec![],
            Duration::from_millis(config.shadow_timeout_ms),
        )
    }

    fn catchup_reply(&mut self, shared: &Shared, id: u64, reply: Reply, now: u64) {
        let Some(catchup) = self.catchup.as_mut() else {
            return;
        };
        let (calls, events) = catchup.on_reply(id, reply, now);
        self.catchup_events(shared, &events);
        for (id, call) in calls {
            self.dispatch_call(shared, id, &call, now);
        }
        self.publish(shared, now);
    }

    fn catchup_events(&self, shared: &Shared, events: &[catchup::Event]) {
        let name = |i: &usize| {
            shared
                .config
                .replicas
                .get(*i)
                .map_or("?", String::as_str)
                .to_owned()
        };
        for event in events {
            match event {
                catchup::Event::Started {
                    replica,
                    from,
                    snapshot,
                } => {
                    metrics::add(shared.metrics.catchups, 1);
                    let how = if *snapshot { "a snapshot" } else { "the log" };
                    log::info!(
                        "replikv: catching up replica={} from seq {from} with {how}",
                        name(replica)
                    );
                }
                catchup::Event::BatchApplied { replica, from, to } => {
                    metrics::add(shared.metrics.catchup_batches, 1);
                    log::info!(
                        "replikv: replica={} caught up from seq {from} to {to}",
                        name(replica)
                    );
                }
                catchup::Event::SnapshotInstalled { replica, seq } => {
                    metrics::add(shared.metrics.snapshots, 1);
                    log::warn!(
                        "replikv: replica={} took a full snapshot at seq {seq}",
                        name(replica)
                    );
                }
                catchup::Event::Diverged { replica } => {
                    log::error!(
                        "replikv: replica={} holds more writes of another history than this primary; not overwriting it (wipe its data dir to resync)",
                        name(replica)
                    );
                }
                catchup::Event::Failed {
                    replica,
                    step,
                    status,
                } => {
                    if *step != "probe" {
                        metrics::add(shared.metrics.catchup_failed, 1);
                    }
                    log::info!(
                        "replikv: catch-up {step} for replica={} failed: status {status:?}",
                        name(replica)
                    );
                }
            }
        }
    }

    /// Publishes the view and the lag gauges (leader only).
    fn publish(&self, shared: &Shared, now: u64) {
        let Some(catchup) = self.catchup.as_ref() else {
            return;
        };
        let local: Option<&Position> = catchup.local();
        let view = match shared.config.role {
            Role::Primary => {
                let replicas: Vec<_> = shared
                    .config
                    .replicas
                    .iter()
                    .enumerate()
                    .filter_map(|(i, name)| Some((name.clone(), catchup.replica(i)?)))
                    .collect();
                status::primary_view(local, &replicas, now)
            }
            Role::Replica => {
                let (seen, _) = shared_get(SEEN_KEY);
                status::replica_view(local, seen.as_deref().and_then(status::decode_seen), now)
            }
        };
        metrics::set(shared.metrics.seq, view.seq.unwrap_or(0));
        metrics::set(shared.metrics.lag_writes, view.lag_writes.unwrap_or(0));
        metrics::set(shared.metrics.lag_ms, view.lag_ms.unwrap_or(0));
        for (gauges, r) in shared.metrics.replica_lag.iter().zip(&view.replicas) {
            metrics::set(gauges.0, r.lag_writes.unwrap_or(0));
            metrics::set(gauges.1, r.lag_ms.unwrap_or(0));
        }
        if let Ok(json) = serde_json::to_vec(&view) {
            let _ = shared_set(VIEW_KEY, &json, None);
        }
    }

    fn record(&self, shared: &Shared, event: &Event, now: u64) {
        match event {
            Event::Delivered { settled, .. } => {
                metrics::add(
                    shared.metrics.shadow_ok,
                    i64::try_from(*settled).unwrap_or(1),
                );
            }
            Event::Failed {
                cluster,
                seq,
                last,
                status,
                retry_in_ms,
            } => {
                metrics::add(shared.metrics.shadow_failed, 1);
                let status = status.map_or_else(|| "none (no reply)".to_owned(), |s| s.to_string());
                let what = if last > seq {
                    format!("batch seq={seq}..={last}")
                } else {
                    format!("write seq={seq}")
                };
                log::info!(
                    "replikv: shadow {what} failed: replica={cluster} status={status}; retry in {retry_in_ms} ms"
                );
            }
            Event::BatchUnavailable {
                cluster,
                status,
                until_ms,
            } => {
                log::info!(
                    "replikv: no batch from the local log for replica={cluster} (status {status:?}); shipping one write at a time for {} ms",
                    until_ms.saturating_sub(now)
                );
            }
            Event::Detached {
                cluster,
                dropped,
                until_ms,
            } => {
                metrics::add(shared.metrics.shadow_detached, 1);
                metrics::add(
                    shared.metrics.shadow_deferred,
                    i64::try_from(*dropped).unwrap_or(1),
                );
                log::warn!(
                    "replikv: replica={cluster} keeps failing: {dropped} queued writes left to catch-up from the log; not buffering for it for {} ms",
                    until_ms.saturating_sub(now)
                );
            }
            Event::Stale => {}
        }
    }

    fn response_body(body_size: usize) -> Vec<u8> {
        if body_size == 0 {
            return Vec::new();
        }
        hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    fn response_header(name: &str) -> Option<String> {
        hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name)
            .ok()
            .flatten()
            .and_then(|v| String::from_utf8(v).ok())
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(pending) = self.in_flight.remove(&token_id) else {
            return;
        };
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let now = now_ms();
        let status = if num_headers == 0 {
            None
        } else {
            Self::response_header(":status").and_then(|s| s.parse::<u32>().ok())
        };
        let history = Self::response_header("x-replikv-history");
        let seq = Self::response_header("x-replikv-seq").and_then(|s| proof::parse_decimal(&s));
        match pending {
            Pending::Shadow {
                attempt,
                history: write_history,
            } => {
                let outcome = match status {
                    Some(status) => Outcome::Reply {
                        status,
                        // A seq of another history says nothing about this one.
                        replica_seq: seq.filter(|_| history.as_deref() == Some(&write_history)),
                    },
                    None => Outcome::NoReply,
                };
                let event = match shared.shipper.try_borrow_mut() {
                    Ok(mut s) => s.on_reply(attempt, outcome, now),
                    Err(_) => Event::Stale,
                };
                if let (Event::Failed { cluster, .. }, Some(409)) = (&event, status) {
                    // A hole or another history: let catch-up look at once.
                    if self.is_leader(now) {
                        let index = shared.config.replicas.iter().position(|c| c == cluster);
                        if let (Some(i), Some(c)) = (index, self.catchup.as_mut()) {
                            c.hint(i, now);
                        }
                    }
                }
                self.record(&shared, &event, now);
            }
            Pending::ShadowLog { attempt } => {
                let body = Self::response_body(body_size);
                let next = match shared.shipper.try_borrow_mut() {
                    Ok(mut s) => s.on_log(attempt, status, body, now),
                    Err(_) => Err(Event::Stale),
                };
                match next {
                    Ok(Some(push)) => self.dispatch(&shared, &push, now),
                    // The batch was read ahead: it waits until the attempt in flight succeeds.
                    Ok(None) => {}
                    Err(event) => self.record(&shared, &event, now),
                }
            }
            Pending::Catchup { id } => {
                let body = Self::response_body(body_size);
                let reply = Reply {
                    status,
                    history,
                    seq,
                    body,
                };
                self.catchup_reply(&shared, id, reply, now);
            }
        }
        self.pump();
    }

    fn on_done(&mut self) -> bool {
        self.release_lease();
        let Some(shared) = self.shared.clone() else {
            return true;
        };
        if shared.shipper.try_borrow().is_ok_and(|s| s.is_busy()) {
            self.draining_until = Some(now_ms().saturating_add(DRAIN_GRACE_MS));
            self.set_tick(BUSY_TICK);
            return false;
        }
        shared.clear_queued_gauge();
        true
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        self.configure()
    }

    fn on_tick(&mut self) {
        self.pump();
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(_)) = hostcalls::dequeue_shared_queue(queue_id) {}
        self.pump();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http::new(context_id, self.shared.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
