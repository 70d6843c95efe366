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

use crate::config::Config;
use crate::http::Http;
use crate::metrics::{self, Metrics};
use crate::proof::{self, SignedFields};
use crate::shipper::{Attempt, Event, Outcome, Shipper};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, MapType};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

/// Tick period while shadow writes are queued or in flight: the resolution of
/// retry backoff.
const BUSY_TICK: Duration = Duration::from_millis(10);

/// Tick period when idle: a safety net should a queue wakeup ever be lost.
const IDLE_TICK: Duration = Duration::from_millis(1_000);

/// How long a root being shut down (config change, listener drain) keeps
/// delivering queued writes before it lets Envoy delete it.
const DRAIN_GRACE_MS: u64 = 10_000;

/// State shared by the root and the HTTP contexts it creates.
pub(crate) struct Shared {
    pub config: Config,
    pub shipper: RefCell<Shipper>,
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

/// The plugin's root context.
#[derive(Default)]
pub(crate) struct Root {
    shared: Option<Rc<Shared>>,
    /// Callout token → shipper attempt id.
    in_flight: HashMap<u32, u64>,
    tick: Option<Duration>,
    /// Set when Envoy asked this root to finish: the time by which it gives up.
    draining_until: Option<u64>,
}

impl Root {
    fn configure(&mut self) -> bool {
        let bytes = hostcalls::get_buffer(
            proxy_wasm::types::BufferType::PluginConfiguration,
            0,
            usize::MAX,
        )
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
        let metrics = Metrics::define();
        let name = format!("replikv.shipper.{}", proof::hex_lower(&random_bytes::<8>()));
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
        );
        self.shared = Some(Rc::new(Shared {
            config,
            shipper: RefCell::new(shipper),
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

    /// Expires overdue attempts, dispatches what is due, and adjusts the tick.
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
            self.record(&shared, event);
        }
        for attempt in attempts {
            self.dispatch(&shared, &attempt, now);
        }
        shared.sync_queued_gauge();

        let busy = shared.shipper.try_borrow().map_or(true, |s| s.is_busy());
        if let Some(deadline) = self.draining_until {
            if !busy || now >= deadline {
                if busy {
                    log::warn!(
                        "replikv: shutting down with {} shadow writes undelivered",
                        shared.shipper.try_borrow().map_or(0, |s| s.queued())
                    );
                }
                self.draining_until = None;
                shared.clear_queued_gauge();
                let _ = hostcalls::done();
                return;
            }
        }
        self.set_tick(if busy { BUSY_TICK } else { IDLE_TICK });
    }

    fn dispatch(&mut self, shared: &Shared, attempt: &Attempt, now: u64) {
        let config = &shared.config;
        let w = &attempt.write;
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
        match hostcalls::dispatch_http_call(&attempt.cluster, headers, body, vec![], timeout) {
            Ok(token) => {
                self.in_flight.insert(token, attempt.id);
            }
            Err(status) => {
                log::info!(
                    "replikv: shadow write seq={} to replica={} not dispatched: {status:?}",
                    w.seq,
                    attempt.cluster
                );
                let event = match shared.shipper.try_borrow_mut() {
                    Ok(mut s) => s.on_reply(attempt.id, Outcome::NoReply, now),
                    Err(_) => Event::Stale,
                };
                self.record(shared, &event);
            }
        }
    }

    fn record(&self, shared: &Shared, event: &Event) {
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
                status,
                retry_in_ms,
            } => {
                metrics::add(shared.metrics.shadow_failed, 1);
                let status = status.map_or_else(|| "none (no reply)".to_owned(), |s| s.to_string());
                log::info!(
                    "replikv: shadow write failed: replica={cluster} seq={seq} status={status}; retry in {retry_in_ms} ms"
                );
            }
            Event::Stale => {}
        }
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        _body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(attempt) = self.in_flight.remove(&token_id) else {
            return;
        };
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let outcome = if num_headers == 0 {
            Outcome::NoReply
        } else {
            let header = |name: &str| {
                hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name)
                    .ok()
                    .flatten()
                    .and_then(|v| String::from_utf8(v).ok())
            };
            match header(":status").and_then(|s| s.parse::<u32>().ok()) {
                Some(status) => Outcome::Reply {
                    status,
                    replica_seq: header("x-replikv-seq").and_then(|s| proof::parse_decimal(&s)),
                },
                None => Outcome::NoReply,
            }
        };
        let event = match shared.shipper.try_borrow_mut() {
            Ok(mut s) => s.on_reply(attempt, outcome, now_ms()),
            Err(_) => Event::Stale,
        };
        self.record(&shared, &event);
        self.pump();
    }

    fn on_done(&mut self) -> bool {
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
