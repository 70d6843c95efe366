//! The shadow-write queue of one VM: per replica, the writes still to deliver,
//! kept sorted by seq, one request in flight at a time, retried with exponential
//! backoff, bounded in bytes. Pure state machine: the root context feeds it the
//! clock, dispatches the [`Attempt`]s it hands out and reports each reply back.
//!
//! Every Envoy worker has its own VM, so several shippers send to the same
//! replica; a replica that gets seq N+1 before another worker's N answers 409
//! `ReplicationGap`, and the later write is simply retried after a backoff.
//!
//! The shipper is a fast path, not the source of truth: a replica that keeps
//! failing for `detach_after_ms` is *detached* (its queued writes are dropped
//! and new ones are not buffered for a while), and the catch-up leader
//! ([`crate::catchup`]) brings it up to date from the primary's durable log.

use crate::config::Backoff;
use std::collections::VecDeque;
use std::rc::Rc;

/// Bytes charged per queued write on top of its strings and body, for the
/// bookkeeping around it.
const ENTRY_OVERHEAD: usize = 128;

/// Extra time past the callout timeout after which an attempt whose reply never
/// came is counted as failed, so a lost callback cannot wedge a replica's lane.
const LOST_REPLY_GRACE_MS: u64 = 1_000;

/// One write the primary applied, as it will be sent to each replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowWrite {
    pub method: String,
    /// Path and query exactly as the client sent them.
    pub path: String,
    pub content_type: Option<String>,
    pub body: Rc<[u8]>,
    /// From the backend's `x-replikv-history`.
    pub history: String,
    /// From the backend's `x-replikv-seq`.
    pub seq: u64,
    /// From the backend's `x-replikv-applied-at`.
    pub applied_at: u64,
}

impl ShadowWrite {
    /// What this write costs in a queue. The body is shared between replicas but
    /// charged to each, which keeps the bound simple and on the safe side.
    pub fn cost(&self) -> usize {
        ENTRY_OVERHEAD
            + self.method.len()
            + self.path.len()
            + self.content_type.as_ref().map_or(0, String::len)
            + self.history.len()
            + self.body.len()
    }
}

/// How one attempt ended, as far as the shipper cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The replica answered with this `:status` and, when present, its applied
    /// seq from `x-replikv-seq`.
    Reply {
        status: u32,
        replica_seq: Option<u64>,
    },
    /// No answer: dispatch refused, connection failure, reset or timeout.
    NoReply,
}

/// A request to send now. The root signs and dispatches it, then reports the
/// reply with [`Shipper::on_reply`] under `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub id: u64,
    /// The replica's Envoy cluster.
    pub cluster: String,
    pub write: Rc<ShadowWrite>,
    /// Whether an earlier attempt of this write to this replica failed.
    pub is_retry: bool,
}

/// What a reply (or a lost one) did to the queue; the root turns these into
/// metrics and log lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The replica has this write: it applied it or already had it. `settled`
    /// counts the queued writes this reply showed delivered, this one included.
    Delivered {
        cluster: String,
        seq: u64,
        settled: usize,
    },
    /// The attempt failed; the write is tried again after `retry_in_ms`.
    Failed {
        cluster: String,
        seq: u64,
        status: Option<u32>,
        retry_in_ms: u64,
    },
    /// A reply for an attempt the shipper no longer waits for (it expired, or
    /// its write was dropped); nothing changed.
    Stale,
    /// The replica kept failing: its `dropped` queued writes were given up, and
    /// it is left to catch up from the log; new writes are not buffered for it
    /// until `until_ms`.
    Detached {
        cluster: String,
        dropped: usize,
        until_ms: u64,
    },
}

/// What [`Shipper::enqueue`] did besides queueing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Enqueued {
    /// Queued writes given up to stay within the byte bound.
    pub dropped: usize,
    /// Replicas this write was not queued for because they are detached.
    pub deferred: usize,
}

#[derive(Debug)]
struct Entry {
    write: Rc<ShadowWrite>,
    failures: u32,
    not_before_ms: u64,
}

#[derive(Debug)]
struct InFlight {
    attempt: u64,
    seq: u64,
    give_up_at_ms: u64,
}

/// The queue towards one replica.
#[derive(Debug)]
struct Lane {
    cluster: String,
    queue: VecDeque<Entry>,
    in_flight: Option<InFlight>,
    /// Highest seq this replica is known to hold (0: nothing known).
    confirmed: u64,
    /// When the current run of failures began (`None` after a success).
    failing_since: Option<u64>,
    /// While detached: nothing is buffered for this replica before this instant.
    detached_until: u64,
}

/// All replicas' queues of one VM.
#[derive(Debug)]
pub struct Shipper {
    lanes: Vec<Lane>,
    bytes: usize,
    max_bytes: usize,
    backoff: Backoff,
    timeout_ms: u64,
    detach_after_ms: u64,
    next_attempt_id: u64,
}

impl Shipper {
    /// A shipper towards `clusters`, holding at most `max_bytes` of writes in
    /// all, detaching a replica that has failed for `detach_after_ms`.
    pub fn new(
        clusters: &[String],
        max_bytes: usize,
        backoff: Backoff,
        timeout_ms: u64,
        detach_after_ms: u64,
    ) -> Self {
        Shipper {
            lanes: clusters
                .iter()
                .map(|c| Lane {
                    cluster: c.clone(),
                    queue: VecDeque::new(),
                    in_flight: None,
                    confirmed: 0,
                    failing_since: None,
                    detached_until: 0,
                })
                .collect(),
            bytes: 0,
            max_bytes,
            backoff,
            timeout_ms,
            detach_after_ms,
            next_attempt_id: 1,
        }
    }

    /// Queues `write` for every attached replica, in seq order; a seq already
    /// queued for a replica is not queued twice. Queued writes are dropped
    /// (oldest first; a write larger than the whole bound is dropped itself) to
    /// stay within the byte bound: the log has them.
    pub fn enqueue(&mut self, write: ShadowWrite, now_ms: u64) -> Enqueued {
        let write = Rc::new(write);
        let cost = write.cost();
        let mut out = Enqueued::default();
        for lane in &mut self.lanes {
            if lane.detached_until > now_ms {
                out.deferred += 1;
                continue;
            }
            if cost > self.max_bytes {
                out.dropped += 1;
                continue;
            }
            let pos = lane.queue.partition_point(|e| e.write.seq < write.seq);
            if lane
                .queue
                .get(pos)
                .is_some_and(|e| e.write.seq == write.seq)
            {
                continue;
            }
            lane.queue.insert(
                pos,
                Entry {
                    write: Rc::clone(&write),
                    failures: 0,
                    not_before_ms: 0,
                },
            );
            self.bytes += cost;
        }
        while self.bytes > self.max_bytes {
            if !self.drop_oldest() {
                break;
            }
            out.dropped += 1;
        }
        out
    }

    /// The highest seq `cluster` is known to hold, from the replies seen here.
    pub fn confirmed(&self, cluster: &str) -> u64 {
        self.lanes
            .iter()
            .find(|l| l.cluster == cluster)
            .map_or(0, |l| l.confirmed)
    }

    /// Records that `cluster` holds `seq` (learnt elsewhere, e.g. by catch-up),
    /// settling the queued writes it covers.
    pub fn note_confirmed(&mut self, cluster: &str, seq: u64) -> usize {
        let Some(lane) = self.lanes.iter_mut().find(|l| l.cluster == cluster) else {
            return 0;
        };
        lane.confirmed = lane.confirmed.max(seq);
        let mut settled = 0;
        let in_flight = lane.in_flight.as_ref().map(|f| f.seq);
        while lane
            .queue
            .front()
            .is_some_and(|e| e.write.seq <= seq && Some(e.write.seq) != in_flight)
        {
            if let Some(entry) = lane.queue.pop_front() {
                self.bytes = self.bytes.saturating_sub(entry.write.cost());
                settled += 1;
            }
        }
        settled
    }

    /// Removes the lowest-seq write of all lanes. An attempt in flight for it
    /// stays in flight; its reply will be [`Event::Stale`] or settle the next.
    fn drop_oldest(&mut self) -> bool {
        let oldest = self
            .lanes
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.queue.front().map(|e| (e.write.seq, i)))
            .min();
        let Some((_, lane)) = oldest else {
            return false;
        };
        if let Some(entry) = self.lanes[lane].queue.pop_front() {
            self.bytes = self.bytes.saturating_sub(entry.write.cost());
        }
        true
    }

    /// Counts as failed every attempt whose reply is overdue, so its lane moves on.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Event> {
        let mut events = Vec::new();
        for i in 0..self.lanes.len() {
            let overdue = self.lanes[i]
                .in_flight
                .as_ref()
                .filter(|f| now_ms >= f.give_up_at_ms)
                .map(|f| f.attempt);
            if let Some(attempt) = overdue {
                events.push(self.settle(i, attempt, Outcome::NoReply, now_ms));
            }
        }
        events
    }

    /// The attempts to send now: the lowest-seq write of every lane that has
    /// nothing in flight and whose backoff has passed. They count as in flight
    /// from here on.
    pub fn poll(&mut self, now_ms: u64) -> Vec<Attempt> {
        let mut attempts = Vec::new();
        let give_up_at_ms = now_ms
            .saturating_add(self.timeout_ms)
            .saturating_add(LOST_REPLY_GRACE_MS);
        for lane in &mut self.lanes {
            if lane.in_flight.is_some() {
                continue;
            }
            let Some(head) = lane.queue.front() else {
                continue;
            };
            if head.not_before_ms > now_ms {
                continue;
            }
            let id = self.next_attempt_id;
            self.next_attempt_id += 1;
            lane.in_flight = Some(InFlight {
                attempt: id,
                seq: head.write.seq,
                give_up_at_ms,
            });
            attempts.push(Attempt {
                id,
                cluster: lane.cluster.clone(),
                write: Rc::clone(&head.write),
                is_retry: head.failures > 0,
            });
        }
        attempts
    }

    /// Applies the end of attempt `id`.
    ///
    /// A 2xx, or a reply whose `x-replikv-seq` shows the replica already has the
    /// write, delivers it (and every queued write up to that seq). Anything else
    /// (no reply, 5xx, 409 `ReplicationGap`, ...) is retried after a backoff that
    /// doubles with each failure of that write.
    pub fn on_reply(&mut self, id: u64, outcome: Outcome, now_ms: u64) -> Event {
        let lane = self
            .lanes
            .iter()
            .position(|l| l.in_flight.as_ref().is_some_and(|f| f.attempt == id));
        match lane {
            Some(lane) => self.settle(lane, id, outcome, now_ms),
            None => Event::Stale,
        }
    }

    fn settle(&mut self, lane_index: usize, attempt: u64, outcome: Outcome, now_ms: u64) -> Event {
        let backoff = self.backoff;
        let lane = &mut self.lanes[lane_index];
        let Some(flight) = lane.in_flight.take().filter(|f| f.attempt == attempt) else {
            return Event::Stale;
        };
        let seq = flight.seq;
        let (delivered_up_to, status) = match outcome {
            Outcome::Reply {
                status,
                replica_seq,
            } => {
                let has_it = replica_seq.filter(|applied| *applied >= seq);
                if (200..300).contains(&status) {
                    (Some(replica_seq.map_or(seq, |a| a.max(seq))), Some(status))
                } else {
                    (has_it, Some(status))
                }
            }
            Outcome::NoReply => (None, None),
        };

        if let Some(up_to) = delivered_up_to {
            lane.confirmed = lane.confirmed.max(up_to);
            lane.failing_since = None;
            let up_to = lane.confirmed;
            let mut settled = 0;
            while lane.queue.front().is_some_and(|e| e.write.seq <= up_to) {
                if let Some(entry) = lane.queue.pop_front() {
                    self.bytes = self.bytes.saturating_sub(entry.write.cost());
                    settled += 1;
                }
            }
            return Event::Delivered {
                cluster: lane.cluster.clone(),
                seq,
                settled,
            };
        }

        let failing_since = *lane.failing_since.get_or_insert(now_ms);
        if now_ms.saturating_sub(failing_since) >= self.detach_after_ms {
            let dropped = lane.queue.len();
            for entry in lane.queue.drain(..) {
                self.bytes = self.bytes.saturating_sub(entry.write.cost());
            }
            lane.failing_since = None;
            lane.detached_until = now_ms.saturating_add(self.detach_after_ms);
            return Event::Detached {
                cluster: lane.cluster.clone(),
                dropped,
                until_ms: lane.detached_until,
            };
        }
        // The write may have been dropped while in flight; then only the lane is freed.
        let Some(entry) = lane.queue.iter_mut().find(|e| e.write.seq == seq) else {
            return Event::Stale;
        };
        entry.failures = entry.failures.saturating_add(1);
        let retry_in_ms = backoff.delay_ms(entry.failures);
        entry.not_before_ms = now_ms.saturating_add(retry_in_ms);
        Event::Failed {
            cluster: lane.cluster.clone(),
            seq,
            status,
            retry_in_ms,
        }
    }

    /// Writes queued over all replicas, in flight included.
    pub fn queued(&self) -> usize {
        self.lanes.iter().map(|l| l.queue.len()).sum()
    }

    /// Bytes charged for the queued writes.
    pub fn queued_bytes(&self) -> usize {
        self.bytes
    }

    /// Whether anything is queued or in flight, i.e. whether ticks are needed.
    pub fn is_busy(&self) -> bool {
        self.lanes
            .iter()
            .any(|l| !l.queue.is_empty() || l.in_flight.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff {
        first_ms: 10,
        max_ms: 1_000,
    };
    const TIMEOUT: u64 = 5_000;

    fn write(seq: u64) -> ShadowWrite {
        ShadowWrite {
            method: "POST".into(),
            path: "/api/9/http/keyvals/default".into(),
            content_type: Some("application/json".into()),
            body: Rc::from(&br#"{"k":"v"}"#[..]),
            history: "00112233445566778899aabbccddeeff".into(),
            seq,
            applied_at: 1_700_000_000_000,
        }
    }

    const DETACH: u64 = 60_000;

    fn shipper(clusters: &[&str]) -> Shipper {
        let clusters: Vec<String> = clusters.iter().map(|c| (*c).to_owned()).collect();
        Shipper::new(&clusters, 1 << 20, BACKOFF, TIMEOUT, DETACH)
    }

    fn bounded(clusters: &[&str], max_bytes: usize) -> Shipper {
        let clusters: Vec<String> = clusters.iter().map(|c| (*c).to_owned()).collect();
        Shipper::new(&clusters, max_bytes, BACKOFF, TIMEOUT, DETACH)
    }

    impl Shipper {
        /// Enqueue at time 0, returning only the number dropped.
        fn push(&mut self, w: ShadowWrite) -> usize {
            self.enqueue(w, 0).dropped
        }
    }

    fn ok() -> Outcome {
        Outcome::Reply {
            status: 201,
            replica_seq: None,
        }
    }

    fn gap(replica_seq: u64) -> Outcome {
        Outcome::Reply {
            status: 409,
            replica_seq: Some(replica_seq),
        }
    }

    fn seqs(attempts: &[Attempt]) -> Vec<(String, u64)> {
        attempts
            .iter()
            .map(|a| (a.cluster.clone(), a.write.seq))
            .collect()
    }

    #[test]
    fn write_is_sent_to_every_replica() {
        let mut s = shipper(&["r1", "r2"]);
        assert_eq!(s.push(write(1)), 0);
        let a = s.poll(0);
        assert_eq!(seqs(&a), [("r1".into(), 1), ("r2".into(), 1)]);
        assert!(a.iter().all(|a| !a.is_retry));
        assert_eq!(s.queued(), 2);
    }

    #[test]
    fn one_request_in_flight_per_replica() {
        let mut s = shipper(&["r1"]);
        s.push(write(1));
        s.push(write(2));
        let first = s.poll(0);
        assert_eq!(seqs(&first), [("r1".into(), 1)]);
        assert!(s.poll(1).is_empty());
        s.on_reply(first[0].id, ok(), 2);
        assert_eq!(seqs(&s.poll(2)), [("r1".into(), 2)]);
    }

    #[test]
    fn success_drops_the_write() {
        let mut s = shipper(&["r1"]);
        s.push(write(1));
        let a = s.poll(0);
        let event = s.on_reply(a[0].id, ok(), 1);
        assert_eq!(
            event,
            Event::Delivered {
                cluster: "r1".into(),
                seq: 1,
                settled: 1
            }
        );
        assert_eq!(s.queued(), 0);
        assert_eq!(s.queued_bytes(), 0);
        assert!(!s.is_busy());
    }

    #[test]
    fn queue_is_kept_sorted_by_seq() {
        let mut s = shipper(&["r1"]);
        s.push(write(3));
        s.push(write(1));
        s.push(write(2));
        let mut sent = Vec::new();
        for now in 0..3 {
            let a = s.poll(now);
            sent.push(a[0].write.seq);
            s.on_reply(a[0].id, ok(), now);
        }
        assert_eq!(sent, [1, 2, 3]);
    }

    #[test]
    fn same_seq_is_not_queued_twice() {
        let mut s = shipper(&["r1"]);
        s.push(write(1));
        s.push(write(1));
        assert_eq!(s.queued(), 1);
    }

    #[test]
    fn gap_reply_is_retried_after_backoff() {
        let mut s = shipper(&["r1"]);
        s.push(write(5));
        let a = s.poll(100);
        let event = s.on_reply(a[0].id, gap(3), 100);
        assert_eq!(
            event,
            Event::Failed {
                cluster: "r1".into(),
                seq: 5,
                status: Some(409),
                retry_in_ms: 10
            }
        );
        assert!(s.poll(109).is_empty());
        let retry = s.poll(110);
        assert_eq!(seqs(&retry), [("r1".into(), 5)]);
        assert!(retry[0].is_retry);
    }

    #[test]
    fn backoff_doubles_with_each_failure_up_to_the_maximum() {
        let mut s = shipper(&["r1"]);
        s.push(write(1));
        let mut now = 0;
        let mut delays = Vec::new();
        for _ in 0..9 {
            let a = s.poll(now);
            assert_eq!(a.len(), 1, "at {now}");
            match s.on_reply(a[0].id, Outcome::NoReply, now) {
                Event::Failed { retry_in_ms, .. } => {
                    delays.push(retry_in_ms);
                    now += retry_in_ms;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(delays, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    }

    #[test]
    fn server_error_is_retried() {
        let mut s = shipper(&["r1"]);
        s.push(write(1));
        let a = s.poll(0);
        let reply = Outcome::Reply {
            status: 503,
            replica_seq: None,
        };
        assert!(matches!(
            s.on_reply(a[0].id, reply, 0),
            Event::Failed {
                status: Some(503),
                ..
            }
        ));
        assert_eq!(s.queued(), 1);
    }

    #[test]
    fn reply_showing_replica_already_has_the_write_drops_it() {
        let mut s = shipper(&["r1"]);
        s.push(write(4));
        let a = s.poll(0);
        // Another worker's shipper got there first: the replica reports seq 4.
        let event = s.on_reply(a[0].id, gap(4), 0);
        assert!(matches!(event, Event::Delivered { seq: 4, .. }));
        assert_eq!(s.queued(), 0);
    }

    #[test]
    fn reply_settles_every_write_the_replica_already_has() {
        let mut s = shipper(&["r1"]);
        for seq in 1..=4 {
            s.push(write(seq));
        }
        let a = s.poll(0);
        let reply = Outcome::Reply {
            status: 200,
            replica_seq: Some(3),
        };
        assert_eq!(
            s.on_reply(a[0].id, reply, 0),
            Event::Delivered {
                cluster: "r1".into(),
                seq: 1,
                settled: 3
            }
        );
        assert_eq!(seqs(&s.poll(0)), [("r1".into(), 4)]);
    }

    #[test]
    fn lower_seq_arriving_during_backoff_goes_first() {
        let mut s = shipper(&["r1"]);
        s.push(write(6));
        let a = s.poll(0);
        s.on_reply(a[0].id, gap(4), 0);
        s.push(write(5));
        assert_eq!(seqs(&s.poll(1)), [("r1".into(), 5)]);
    }

    #[test]
    fn replicas_progress_independently() {
        let mut s = shipper(&["r1", "r2"]);
        s.push(write(1));
        s.push(write(2));
        let a = s.poll(0);
        s.on_reply(a[0].id, Outcome::NoReply, 0);
        s.on_reply(a[1].id, ok(), 0);
        assert_eq!(seqs(&s.poll(0)), [("r2".into(), 2)]);
    }

    #[test]
    fn queue_over_bound_drops_oldest() {
        let cost = write(1).cost();
        let mut s = bounded(&["r1"], cost * 2);
        assert_eq!(s.push(write(1)), 0);
        assert_eq!(s.push(write(2)), 0);
        assert_eq!(s.push(write(3)), 1);
        assert_eq!(s.queued(), 2);
        assert_eq!(s.queued_bytes(), cost * 2);
        assert_eq!(seqs(&s.poll(0)), [("r1".into(), 2)]);
    }

    #[test]
    fn write_larger_than_the_bound_is_dropped() {
        let mut s = bounded(&["r1", "r2"], 64);
        assert_eq!(s.push(write(1)), 2);
        assert_eq!(s.queued(), 0);
        assert!(!s.is_busy());
    }

    #[test]
    fn reply_for_a_dropped_write_only_frees_the_lane() {
        let cost = write(1).cost();
        let mut s = bounded(&["r1"], cost);
        s.push(write(1));
        let a = s.poll(0);
        assert_eq!(s.push(write(2)), 1);
        assert_eq!(s.on_reply(a[0].id, Outcome::NoReply, 0), Event::Stale);
        assert_eq!(seqs(&s.poll(0)), [("r1".into(), 2)]);
    }

    #[test]
    fn overdue_attempt_is_counted_failed_and_its_late_reply_ignored() {
        let mut s = shipper(&["r1"]);
        s.push(write(1));
        let a = s.poll(0);
        assert!(s.expire(TIMEOUT).is_empty());
        let events = s.expire(TIMEOUT + LOST_REPLY_GRACE_MS);
        assert!(matches!(
            events.as_slice(),
            [Event::Failed {
                seq: 1,
                status: None,
                ..
            }]
        ));
        assert_eq!(s.on_reply(a[0].id, ok(), TIMEOUT + 2_000), Event::Stale);
        assert_eq!(s.queued(), 1);
    }

    #[test]
    fn unknown_attempt_id_is_stale() {
        let mut s = shipper(&["r1"]);
        assert_eq!(s.on_reply(42, ok(), 0), Event::Stale);
    }

    #[test]
    fn shipper_without_replicas_queues_nothing() {
        let mut s = shipper(&[]);
        assert_eq!(s.push(write(1)), 0);
        assert!(!s.is_busy());
        assert!(s.poll(0).is_empty());
    }

    #[test]
    fn replica_failing_for_too_long_is_detached_then_reattached() {
        let clusters = ["r1".to_owned()];
        let mut s = Shipper::new(&clusters, 1 << 20, BACKOFF, TIMEOUT, 100);
        s.enqueue(write(1), 0);
        s.enqueue(write(2), 0);
        let a = s.poll(0);
        assert!(matches!(
            s.on_reply(a[0].id, Outcome::NoReply, 0),
            Event::Failed { .. }
        ));
        let a = s.poll(50);
        assert!(matches!(
            s.on_reply(a[0].id, Outcome::NoReply, 50),
            Event::Failed { .. }
        ));
        let a = s.poll(120);
        assert_eq!(
            s.on_reply(a[0].id, Outcome::NoReply, 120),
            Event::Detached {
                cluster: "r1".into(),
                dropped: 2,
                until_ms: 220
            }
        );
        assert!(!s.is_busy());
        assert_eq!(s.queued_bytes(), 0);
        assert_eq!(
            s.enqueue(write(3), 200),
            Enqueued {
                dropped: 0,
                deferred: 1
            }
        );
        assert_eq!(s.queued(), 0);
        assert_eq!(s.enqueue(write(4), 220), Enqueued::default());
        assert_eq!(seqs(&s.poll(220)), [("r1".into(), 4)]);
    }

    #[test]
    fn success_resets_the_failure_run() {
        let clusters = ["r1".to_owned()];
        let mut s = Shipper::new(&clusters, 1 << 20, BACKOFF, TIMEOUT, 100);
        s.enqueue(write(1), 0);
        s.enqueue(write(2), 0);
        let a = s.poll(0);
        s.on_reply(a[0].id, Outcome::NoReply, 0);
        let a = s.poll(90);
        s.on_reply(a[0].id, ok(), 90);
        let a = s.poll(150);
        assert!(matches!(
            s.on_reply(a[0].id, Outcome::NoReply, 150),
            Event::Failed { .. }
        ));
        assert_eq!(s.confirmed("r1"), 1);
    }

    #[test]
    fn confirmation_learnt_elsewhere_settles_queued_writes() {
        let mut s = shipper(&["r1"]);
        for seq in 1..=3 {
            s.push(write(seq));
        }
        let a = s.poll(0);
        // seq 1 is in flight: it stays until its reply.
        assert_eq!(s.note_confirmed("r1", 2), 0);
        s.on_reply(a[0].id, ok(), 0);
        assert_eq!(s.confirmed("r1"), 2);
        assert_eq!(seqs(&s.poll(0)), [("r1".into(), 3)]);
        assert_eq!(s.note_confirmed("nope", 9), 0);
    }
}
