//! The shadow-write queue of one VM: per replica, the writes still to deliver,
//! kept sorted by seq, one request to the replica in flight at a time, retried
//! with exponential backoff, bounded in bytes. Pure state machine: the root
//! context feeds it the clock, dispatches the [`Attempt`]s it hands out and
//! reports each reply back.
//!
//! A lane holding one write sends it as it came (the fast path: one shadow
//! write, the lowest latency). A lane holding two or more sends them as ONE
//! batch: it reads `GET /replikv/log?after=..&limit=..` from this node's own
//! backend (the entries up to its last queued seq, effects included) and pushes
//! that as a signed `POST /replikv/apply`, which the replica commits in one
//! transaction. So the replica's commits no longer cap the write rate. Should
//! the log not give a usable batch (410, error, another history), the lane
//! sends its writes one by one for a while.
//!
//! The log read is pipelined when the replica runs late: while a lane's write
//! or batch is on its way and at least as many writes (two or more) are queued
//! past it as it carries, the lane already reads the next batch (the entries
//! after the last seq in flight; see [`read_ahead_range`] for why it waits
//! that long). When the attempt in flight succeeds, that batch is pushed at
//! once instead of being read only then, so the local round trip leaves the
//! replication path. When the attempt in flight fails, the batch read ahead is
//! dropped and the usual retry takes over: nothing is ever pushed past a write
//! the replica may lack, and still only one request per replica is in flight.
//!
//! Every Envoy worker has its own VM, so several shippers send to the same
//! replica; a replica that gets seq N+1 before another worker's N answers 409
//! `ReplicationGap`, and the later write is simply retried after a backoff. A
//! batch starts at the replica's last reported seq when that is near, so it
//! also carries the other workers' writes in between.
//!
//! The shipper is a fast path, not the source of truth: a replica that keeps
//! failing for `detach_after_ms` is *detached* (its queued writes are dropped
//! and new ones are not buffered for a while), and the catch-up leader
//! ([`crate::catchup`]) brings it up to date from the primary's durable log.

use crate::config::Backoff;
use serde::Deserialize;
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

/// What an attempt sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Send {
    /// The write itself, to the replica, as the client sent it.
    Write(Rc<ShadowWrite>),
    /// First step of a batch: `GET /replikv/log?after={after}&limit={limit}`
    /// on this node's backend; its reply goes to [`Shipper::on_log`].
    FetchLog { after: u64, limit: u64 },
    /// Second step: `POST /replikv/apply` of the fetched body to the replica,
    /// signed with `history`, `seq` (the last entry's) and `applied_at` 0.
    /// `read_ahead`: the body was read while the attempt before it was in
    /// flight (counted apart, to show how often the log read left the path).
    PushBatch {
        history: String,
        seq: u64,
        body: Rc<[u8]>,
        read_ahead: bool,
    },
}

/// A request to send now. The root signs and dispatches it, then reports the
/// reply with [`Shipper::on_reply`] (or [`Shipper::on_log`] for a
/// [`Send::FetchLog`]) under `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub id: u64,
    /// The replica's Envoy cluster.
    pub cluster: String,
    pub send: Send,
    /// Whether an earlier attempt of the lane's first write failed.
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
    /// The attempt (of writes `seq..=last`: one write, or a batch) failed; it
    /// is tried again after `retry_in_ms`.
    Failed {
        cluster: String,
        seq: u64,
        last: u64,
        status: Option<u32>,
        retry_in_ms: u64,
    },
    /// The backend's log gave no usable batch (`status` of its answer, `None`
    /// without one); the lane sends its writes one by one until `until_ms`.
    BatchUnavailable {
        cluster: String,
        status: Option<u32>,
        until_ms: u64,
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

/// Which seqs a batch carries: the log entries `after + 1 ..= last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchRange {
    pub after: u64,
    pub last: u64,
}

/// The batch a lane sends instead of its first write, if any: only when it
/// holds at least two writes. It starts after the replica's last reported seq
/// (so it also fills in writes other workers ship) unless none is known or it
/// lies more than `limit` before the first queued write (then just before that
/// write: deep lag is catch-up's job), and ends at the last queued write, at most `limit` entries
/// in all. Ending at one of this lane's own writes keeps two workers' batches
/// from ever ending at the same seq.
pub fn batch_range(
    reported: u64,
    first: u64,
    last_queued: u64,
    queued: usize,
    limit: u64,
) -> Option<BatchRange> {
    if queued < 2 || limit < 2 || first == 0 || last_queued <= first {
        return None;
    }
    let after = if reported == 0 || first.saturating_sub(reported) > limit {
        first - 1
    } else {
        reported.min(first - 1)
    };
    let last = last_queued.min(after.saturating_add(limit));
    (last > first).then_some(BatchRange { after, last })
}

/// The batch a lane reads ahead while its attempt carrying `carried` of its
/// queued writes, up to seq `in_flight_last`, is on its way: the entries after
/// that seq, ending at the last queued write, at most `limit` of them.
///
/// Only once `past` (the writes queued after `in_flight_last`) is at least
/// two (a single write goes as a shadow write, which needs no log read) and at
/// least `carried`. Queued writes arrive at about the pace the lane delivers
/// them, so while the attempt is no slower than the one before, its batch
/// grows no bigger than the one in flight, and reading it once the attempt
/// succeeds makes as large a batch as ever. Once more writes are waiting than
/// the attempt carries, it is running late (a slow replica, a busy core): then
/// the next batch is read meanwhile and the local read leaves the path. Reading
/// ahead as soon as two writes wait splits the stream into smaller batches,
/// each one more replica request and commit on a busy node; in the L1
/// benchmark scenario that made the lag worse, not better.
pub fn read_ahead_range(
    in_flight_last: u64,
    carried: usize,
    past: usize,
    last_queued: u64,
    limit: u64,
) -> Option<BatchRange> {
    if past < 2.max(carried) || limit < 2 || last_queued <= in_flight_last.saturating_add(1) {
        return None;
    }
    let last = last_queued.min(in_flight_last.saturating_add(limit));
    Some(BatchRange {
        after: in_flight_last,
        last,
    })
}

/// The history and the first and last seq of a `GET /replikv/log` answer;
/// `None` when it is not one or holds no entry.
pub fn log_bounds(body: &[u8]) -> Option<(String, u64, u64)> {
    #[derive(Deserialize)]
    struct Batch {
        history: String,
        entries: Vec<Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        seq: u64,
    }
    let batch: Batch = serde_json::from_slice(body).ok()?;
    let first = batch.entries.first()?.seq;
    let last = batch.entries.last()?.seq;
    Some((batch.history, first, last))
}

/// How many of the queued writes have a seq up to `last`.
fn carried(queue: &VecDeque<Entry>, last: u64) -> usize {
    queue.partition_point(|e| e.write.seq <= last)
}

#[derive(Debug)]
struct Entry {
    write: Rc<ShadowWrite>,
    failures: u32,
    not_before_ms: u64,
}

/// The step an attempt in flight is at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// One write to the replica.
    Write,
    /// Reading the batch from the local log (entries after `after`);
    /// `read_ahead` when the read began while the attempt before it was in
    /// flight.
    Fetch { after: u64, read_ahead: bool },
    /// The batch on its way to the replica.
    Push,
}

/// The next batch, read from the log while the lane's attempt is in flight.
#[derive(Debug)]
struct ReadAhead {
    /// The [`Send::FetchLog`] attempt reading it.
    attempt: u64,
    /// The batch holds the entries after this seq: the last seq of the
    /// attempt that was in flight when the read began.
    after: u64,
    /// The last seq asked for.
    last: u64,
    give_up_at_ms: u64,
    /// The batch once read: its history, last seq and body.
    batch: Option<(String, u64, Rc<[u8]>)>,
}

#[derive(Debug)]
struct InFlight {
    attempt: u64,
    /// How many of the lane's queued writes the attempt carries.
    carried: usize,
    /// The lane's first write when the attempt began.
    seq: u64,
    /// The last seq the attempt carries (`seq` for one write).
    last: u64,
    step: Step,
    give_up_at_ms: u64,
}

/// The queue towards one replica.
#[derive(Debug)]
struct Lane {
    cluster: String,
    queue: VecDeque<Entry>,
    in_flight: Option<InFlight>,
    /// The next batch, read (or being read) while `in_flight` is on its way.
    read_ahead: Option<ReadAhead>,
    /// Highest seq this replica is known to hold (0: nothing known).
    confirmed: u64,
    /// The seq the replica last reported (may be below `confirmed` after it
    /// lost data): where the next batch starts.
    reported: u64,
    /// When the current run of failures began (`None` after a success).
    failing_since: Option<u64>,
    /// While detached: nothing is buffered for this replica before this instant.
    detached_until: u64,
    /// Entries per batch (halved when the replica answers 413).
    limit: u64,
    /// After the log failed to give a batch: one write at a time until then.
    single_until: u64,
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
    /// all, detaching a replica that has failed for `detach_after_ms`, sending
    /// at most `batch` writes in one batch (below 2: never batches).
    pub fn new(
        clusters: &[String],
        max_bytes: usize,
        backoff: Backoff,
        timeout_ms: u64,
        detach_after_ms: u64,
        batch: u64,
    ) -> Self {
        Shipper {
            lanes: clusters
                .iter()
                .map(|c| Lane {
                    cluster: c.clone(),
                    queue: VecDeque::new(),
                    in_flight: None,
                    read_ahead: None,
                    confirmed: 0,
                    reported: 0,
                    failing_since: None,
                    detached_until: 0,
                    limit: batch,
                    single_until: 0,
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
        lane.reported = lane.reported.max(seq);
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

    /// Counts as failed every attempt whose reply is overdue, so its lane moves
    /// on; an overdue read ahead is dropped like a log read that gave no batch.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Event> {
        let mut events = Vec::new();
        for i in 0..self.lanes.len() {
            let lane = &mut self.lanes[i];
            if lane
                .read_ahead
                .as_ref()
                .is_some_and(|r| r.batch.is_none() && now_ms >= r.give_up_at_ms)
            {
                lane.read_ahead = None;
                events.push(self.no_batch(i, None, now_ms));
            }
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

    fn give_up_at(&self, now_ms: u64) -> u64 {
        now_ms
            .saturating_add(self.timeout_ms)
            .saturating_add(LOST_REPLY_GRACE_MS)
    }

    /// The attempts to send now. A lane with nothing in flight whose backoff
    /// has passed sends the batch it read ahead, if its read is done (a read
    /// still on its way becomes the lane's attempt), else its lowest-seq write
    /// or the first step of a batch (see [`batch_range`]). A lane with a write
    /// or batch in flight starts reading the next batch (see
    /// [`read_ahead_range`]). They count as in flight from here on.
    pub fn poll(&mut self, now_ms: u64) -> Vec<Attempt> {
        let mut attempts = Vec::new();
        let give_up_at_ms = self.give_up_at(now_ms);
        for lane in &mut self.lanes {
            if let Some(flight) = lane.in_flight.as_ref().map(|f| (f.last, f.carried, f.step)) {
                let id = self.next_attempt_id;
                if let Some(attempt) =
                    Self::start_read_ahead(lane, flight, now_ms, give_up_at_ms, id)
                {
                    self.next_attempt_id += 1;
                    attempts.push(attempt);
                }
                continue;
            }
            let Some(head) = lane.queue.front() else {
                // Everything was delivered meanwhile: nothing to push.
                lane.read_ahead = None;
                continue;
            };
            if head.not_before_ms > now_ms {
                continue;
            }
            let (head_write, is_retry) = (Rc::clone(&head.write), head.failures > 0);
            let head_seq = head_write.seq;
            if let Some(ahead) = lane.read_ahead.take() {
                // Read after a seq the replica holds (the attempt before it
                // succeeded), and still carrying something it lacks: use it.
                let usable = ahead.after <= lane.confirmed
                    && ahead.batch.as_ref().map_or(ahead.last, |b| b.1) > lane.confirmed;
                if usable {
                    let Some((history, last, body)) = ahead.batch else {
                        lane.in_flight = Some(InFlight {
                            attempt: ahead.attempt,
                            carried: carried(&lane.queue, ahead.last),
                            seq: head_seq,
                            last: ahead.last,
                            step: Step::Fetch {
                                after: ahead.after,
                                read_ahead: true,
                            },
                            give_up_at_ms: ahead.give_up_at_ms,
                        });
                        continue;
                    };
                    let id = self.next_attempt_id;
                    self.next_attempt_id += 1;
                    lane.in_flight = Some(InFlight {
                        attempt: id,
                        carried: carried(&lane.queue, last),
                        seq: head_seq,
                        last,
                        step: Step::Push,
                        give_up_at_ms,
                    });
                    attempts.push(Attempt {
                        id,
                        cluster: lane.cluster.clone(),
                        send: Send::PushBatch {
                            history,
                            seq: last,
                            body,
                            read_ahead: true,
                        },
                        is_retry,
                    });
                    continue;
                }
            }
            let Some(tail) = lane.queue.back() else {
                continue;
            };
            let id = self.next_attempt_id;
            self.next_attempt_id += 1;
            let batch = if lane.single_until > now_ms {
                None
            } else {
                batch_range(
                    lane.reported,
                    head_seq,
                    tail.write.seq,
                    lane.queue.len(),
                    lane.limit,
                )
            };
            let (send, last, step) = match batch {
                Some(range) => (
                    Send::FetchLog {
                        after: range.after,
                        limit: range.last - range.after,
                    },
                    range.last,
                    Step::Fetch {
                        after: range.after,
                        read_ahead: false,
                    },
                ),
                None => (Send::Write(head_write), head_seq, Step::Write),
            };
            lane.in_flight = Some(InFlight {
                attempt: id,
                carried: carried(&lane.queue, last),
                seq: head_seq,
                last,
                step,
                give_up_at_ms,
            });
            attempts.push(Attempt {
                id,
                cluster: lane.cluster.clone(),
                send,
                is_retry,
            });
        }
        attempts
    }

    /// The read of the next batch for a lane whose write or batch
    /// `(last seq, writes carried, step)` is on its way, if it is time for one
    /// (none yet, batches allowed, see [`read_ahead_range`]); recorded in the
    /// lane.
    fn start_read_ahead(
        lane: &mut Lane,
        (in_flight_last, in_flight_carried, step): (u64, usize, Step),
        now_ms: u64,
        give_up_at_ms: u64,
        id: u64,
    ) -> Option<Attempt> {
        if lane.read_ahead.is_some()
            || lane.single_until > now_ms
            || matches!(step, Step::Fetch { .. })
        {
            return None;
        }
        let tail = lane.queue.back()?.write.seq;
        let past = lane.queue.len()
            - lane
                .queue
                .partition_point(|e| e.write.seq <= in_flight_last);
        let range = read_ahead_range(in_flight_last, in_flight_carried, past, tail, lane.limit)?;
        lane.read_ahead = Some(ReadAhead {
            attempt: id,
            after: range.after,
            last: range.last,
            give_up_at_ms,
            batch: None,
        });
        Some(Attempt {
            id,
            cluster: lane.cluster.clone(),
            send: Send::FetchLog {
                after: range.after,
                limit: range.last - range.after,
            },
            is_retry: false,
        })
    }

    /// Takes the local backend's answer to the [`Send::FetchLog`] of attempt
    /// `id` (`status` `None`: no answer). A batch that covers the lane's first
    /// write, starts where asked and is of its history is to be pushed: the
    /// returned attempt, in flight from here on. A batch read ahead is kept
    /// until the attempt in flight succeeds (`Ok(None)`). Anything else is an
    /// [`Event::BatchUnavailable`] (or [`Event::Stale`]), and the lane sends
    /// one write at a time for a while.
    pub fn on_log(
        &mut self,
        id: u64,
        status: Option<u32>,
        body: Vec<u8>,
        now_ms: u64,
    ) -> Result<Option<Attempt>, Event> {
        if let Some(index) = self.read_ahead_lane_of(id) {
            return self
                .on_read_ahead(index, status, body, now_ms)
                .map(|()| None);
        }
        let Some(index) = self.lane_of(id) else {
            return Err(Event::Stale);
        };
        let give_up_at_ms = self.give_up_at(now_ms);
        let attempt = self.next_attempt_id;
        let lane = &mut self.lanes[index];
        let (Some(flight), Some(head)) = (lane.in_flight.as_ref(), lane.queue.front()) else {
            lane.in_flight = None;
            return Err(Event::Stale);
        };
        let Step::Fetch { after, read_ahead } = flight.step else {
            return Err(Event::Stale);
        };
        let bounds = (status == Some(200))
            .then(|| log_bounds(&body))
            .flatten()
            .filter(|(history, first, last)| {
                *history == head.write.history && *first == after + 1 && *last >= head.write.seq
            });
        let Some((history, _, last)) = bounds else {
            lane.in_flight = None;
            return Err(self.no_batch(index, status, now_ms));
        };
        self.next_attempt_id += 1;
        let is_retry = head.failures > 0;
        let carried = carried(&lane.queue, last);
        lane.in_flight = Some(InFlight {
            attempt,
            carried,
            seq: head.write.seq,
            last,
            step: Step::Push,
            give_up_at_ms,
        });
        Ok(Some(Attempt {
            id: attempt,
            cluster: lane.cluster.clone(),
            send: Send::PushBatch {
                history,
                seq: last,
                body: Rc::from(body),
                read_ahead,
            },
            is_retry,
        }))
    }

    /// Keeps the batch read ahead for lane `index` if it starts where asked,
    /// is of the queued writes' history and holds at least one entry; else
    /// drops it, and the lane sends one write at a time for a while.
    fn on_read_ahead(
        &mut self,
        index: usize,
        status: Option<u32>,
        body: Vec<u8>,
        now_ms: u64,
    ) -> Result<(), Event> {
        let lane = &mut self.lanes[index];
        let Some(ahead) = lane.read_ahead.as_mut() else {
            return Err(Event::Stale);
        };
        let history = lane.queue.front().map(|e| e.write.history.as_str());
        let bounds = (status == Some(200))
            .then(|| log_bounds(&body))
            .flatten()
            .filter(|(h, first, _)| Some(h.as_str()) == history && *first == ahead.after + 1);
        match bounds {
            Some((history, _, last)) => {
                ahead.batch = Some((history, last, Rc::from(body)));
                Ok(())
            }
            None => {
                lane.read_ahead = None;
                Err(self.no_batch(index, status, now_ms))
            }
        }
    }

    /// The lane whose read ahead (still unanswered) is attempt `id`.
    fn read_ahead_lane_of(&self, id: u64) -> Option<usize> {
        self.lanes.iter().position(|l| {
            l.read_ahead
                .as_ref()
                .is_some_and(|r| r.attempt == id && r.batch.is_none())
        })
    }

    fn lane_of(&self, id: u64) -> Option<usize> {
        self.lanes
            .iter()
            .position(|l| l.in_flight.as_ref().is_some_and(|f| f.attempt == id))
    }

    /// The log gave no batch: one write at a time for the longest backoff.
    fn no_batch(&mut self, index: usize, status: Option<u32>, now_ms: u64) -> Event {
        let until_ms = now_ms.saturating_add(self.backoff.max_ms);
        let lane = &mut self.lanes[index];
        lane.single_until = until_ms;
        Event::BatchUnavailable {
            cluster: lane.cluster.clone(),
            status,
            until_ms,
        }
    }

    /// Applies the end of attempt `id`.
    ///
    /// A 2xx, or a reply whose `x-replikv-seq` shows the replica already has the
    /// write, delivers it (and every queued write up to that seq; for a batch,
    /// up to its last seq). Anything else (no reply, 5xx, 409
    /// `ReplicationGap`, ...) is retried after a backoff that doubles with each
    /// failure of the lane's first write; a 413 also halves the batch size.
    pub fn on_reply(&mut self, id: u64, outcome: Outcome, now_ms: u64) -> Event {
        if let Some(lane) = self.read_ahead_lane_of(id) {
            // Only a read ahead that could not be dispatched ends here.
            self.lanes[lane].read_ahead = None;
            return self.no_batch(lane, None, now_ms);
        }
        match self.lane_of(id) {
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
        if let Step::Fetch { .. } = flight.step {
            // Only a lost or undispatched log read ends here.
            return self.no_batch(lane_index, None, now_ms);
        }
        let (seq, last) = (flight.seq, flight.last);
        let (delivered_up_to, status) = match outcome {
            Outcome::Reply {
                status,
                replica_seq,
            } => {
                if let Some(applied) = replica_seq {
                    lane.reported = applied;
                }
                let has_it = replica_seq.filter(|applied| *applied >= seq);
                if (200..300).contains(&status) {
                    (
                        Some(replica_seq.map_or(last, |a| a.max(last))),
                        Some(status),
                    )
                } else {
                    (has_it, Some(status))
                }
            }
            Outcome::NoReply => (None, None),
        };
        if delivered_up_to.is_none_or(|up_to| up_to < last) {
            // The next batch was read after `last`, which the replica may
            // lack: pushing it could only fail. The retry reads afresh.
            lane.read_ahead = None;
        }

        if let Some(up_to) = delivered_up_to {
            lane.confirmed = lane.confirmed.max(up_to);
            lane.reported = lane.reported.max(up_to);
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
        if status == Some(413) && flight.step == Step::Push {
            lane.limit = (lane.limit / 2).max(1);
        }

        let failing_since = *lane.failing_since.get_or_insert(now_ms);
        if now_ms.saturating_sub(failing_since) >= self.detach_after_ms {
            let dropped = lane.queue.len();
            for entry in lane.queue.drain(..) {
                self.bytes = self.bytes.saturating_sub(entry.write.cost());
            }
            lane.failing_since = None;
            lane.read_ahead = None;
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
            last,
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
            .any(|l| !l.queue.is_empty() || l.in_flight.is_some() || l.read_ahead.is_some())
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
        Shipper::new(&clusters, 1 << 20, BACKOFF, TIMEOUT, DETACH, 1)
    }

    fn bounded(clusters: &[&str], max_bytes: usize) -> Shipper {
        let clusters: Vec<String> = clusters.iter().map(|c| (*c).to_owned()).collect();
        Shipper::new(&clusters, max_bytes, BACKOFF, TIMEOUT, DETACH, 1)
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

    /// The first seq an attempt is about: the write's, or the first entry of a
    /// log read.
    fn first_seq(a: &Attempt) -> u64 {
        match &a.send {
            Send::Write(w) => w.seq,
            Send::FetchLog { after, .. } => after + 1,
            Send::PushBatch { seq, .. } => *seq,
        }
    }

    fn seqs(attempts: &[Attempt]) -> Vec<(String, u64)> {
        attempts
            .iter()
            .map(|a| (a.cluster.clone(), first_seq(a)))
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
            sent.push(first_seq(&a[0]));
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
                last: 5,
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
        let mut s = Shipper::new(&clusters, 1 << 20, BACKOFF, TIMEOUT, 100, 1);
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
        let mut s = Shipper::new(&clusters, 1 << 20, BACKOFF, TIMEOUT, 100, 1);
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

    const H: &str = "00112233445566778899aabbccddeeff";

    fn batching(clusters: &[&str], batch: u64) -> Shipper {
        let clusters: Vec<String> = clusters.iter().map(|c| (*c).to_owned()).collect();
        Shipper::new(&clusters, 1 << 20, BACKOFF, TIMEOUT, DETACH, batch)
    }

    fn log_body(history: &str, first: u64, last: u64) -> Vec<u8> {
        let entries: Vec<String> = (first..=last)
            .map(|s| format!(r#"{{"seq":{s},"applied_at":1,"zone":{{"kind":"http","name":"default"}},"effects":[]}}"#))
            .collect();
        format!(
            r#"{{"history":"{history}","entries":[{}]}}"#,
            entries.join(",")
        )
        .into_bytes()
    }

    fn fetch_of(a: &Attempt) -> (u64, u64) {
        match a.send {
            Send::FetchLog { after, limit } => (after, limit),
            ref other => panic!("expected a log read, got {other:?}"),
        }
    }

    fn replied(status: u32, seq: u64) -> Outcome {
        Outcome::Reply {
            status,
            replica_seq: Some(seq),
        }
    }

    #[test]
    fn batch_range_needs_two_writes_and_ends_at_the_last_queued() {
        assert_eq!(batch_range(0, 1, 1, 1, 500), None);
        assert_eq!(batch_range(0, 1, 2, 2, 1), None);
        assert_eq!(
            batch_range(0, 1, 2, 2, 500),
            Some(BatchRange { after: 0, last: 2 })
        );
        // Starts at the replica's last reported seq, filling what other workers ship.
        assert_eq!(
            batch_range(3, 6, 8, 2, 500),
            Some(BatchRange { after: 3, last: 8 })
        );
        // A replica far behind is catch-up's job: start just before the queue.
        assert_eq!(
            batch_range(10, 1_000, 1_001, 2, 500),
            Some(BatchRange {
                after: 999,
                last: 1_001
            })
        );
        // A stale report above the queue never skips a queued write.
        assert_eq!(
            batch_range(9, 5, 7, 3, 500),
            Some(BatchRange { after: 4, last: 7 })
        );
        // At most `limit` entries.
        assert_eq!(
            batch_range(0, 1, 2_000, 2_000, 500),
            Some(BatchRange {
                after: 0,
                last: 500
            })
        );
        assert_eq!(batch_range(0, 0, 3, 2, 500), None);
    }

    #[test]
    fn log_bounds_reads_history_and_first_and_last_seq() {
        assert_eq!(log_bounds(&log_body(H, 4, 9)), Some((H.to_owned(), 4, 9)));
        assert_eq!(
            log_bounds(format!(r#"{{"history":"{H}","entries":[]}}"#).as_bytes()),
            None
        );
        assert_eq!(log_bounds(b"{\"error\":{}}"), None);
        assert_eq!(log_bounds(b"not json"), None);
    }

    #[test]
    fn one_queued_write_takes_the_fast_path_even_when_batching() {
        let mut s = batching(&["r1"], 500);
        s.push(write(1));
        let a = s.poll(0);
        assert!(matches!(&a[0].send, Send::Write(w) if w.seq == 1));
        assert!(matches!(
            s.on_reply(a[0].id, ok(), 1),
            Event::Delivered { settled: 1, .. }
        ));
    }

    #[test]
    fn queued_writes_go_as_one_batch_read_from_the_log() {
        let mut s = batching(&["r1", "r2"], 500);
        for seq in 1..=3 {
            s.push(write(seq));
        }
        let a = s.poll(0);
        assert_eq!(a.len(), 2);
        assert_eq!(fetch_of(&a[0]), (0, 3));
        assert!(s.poll(1).is_empty(), "one attempt in flight per replica");
        let push = s
            .on_log(a[0].id, Some(200), log_body(H, 1, 3), 1)
            .unwrap()
            .unwrap();
        assert_eq!(push.cluster, "r1");
        let Send::PushBatch {
            history,
            seq,
            body,
            read_ahead: false,
        } = &push.send
        else {
            panic!("{push:?}")
        };
        assert_eq!((history.as_str(), *seq), (H, 3));
        assert_eq!(&body[..], &log_body(H, 1, 3)[..]);
        assert!(!push.is_retry);
        assert_eq!(
            s.on_reply(push.id, replied(204, 3), 2),
            Event::Delivered {
                cluster: "r1".into(),
                seq: 1,
                settled: 3
            }
        );
        assert_eq!(s.confirmed("r1"), 3);
        assert_eq!(s.queued(), 3, "r2 still waits");
        // The old log read's id is no longer in flight.
        assert_eq!(s.on_reply(a[0].id, ok(), 2), Event::Stale);
    }

    #[test]
    fn batch_without_position_header_delivers_up_to_its_last_seq() {
        let mut s = batching(&["r1"], 500);
        for seq in 1..=4 {
            s.push(write(seq));
        }
        let a = s.poll(0);
        let push = s
            .on_log(a[0].id, Some(200), log_body(H, 1, 4), 0)
            .unwrap()
            .unwrap();
        assert!(matches!(
            s.on_reply(push.id, ok(), 0),
            Event::Delivered { settled: 4, .. }
        ));
        assert!(!s.is_busy());
        assert_eq!(s.queued_bytes(), 0);
    }

    #[test]
    fn next_batch_starts_at_the_replicas_reported_seq() {
        let mut s = batching(&["r1"], 500);
        s.push(write(1));
        let a = s.poll(0);
        s.on_reply(a[0].id, replied(201, 1), 0);
        // Seqs 2 and 3 went through another worker; this one holds 4 and 6.
        s.push(write(4));
        s.push(write(6));
        let a = s.poll(0);
        assert_eq!(fetch_of(&a[0]), (1, 5));
        let push = s
            .on_log(a[0].id, Some(200), log_body(H, 2, 6), 0)
            .unwrap()
            .unwrap();
        assert!(matches!(push.send, Send::PushBatch { seq: 6, .. }));
    }

    #[test]
    fn gap_on_a_batch_is_retried_from_where_the_replica_stands() {
        let mut s = batching(&["r1"], 500);
        for seq in 5..=6 {
            s.push(write(seq));
        }
        let a = s.poll(0);
        assert_eq!(fetch_of(&a[0]), (4, 2));
        let push = s
            .on_log(a[0].id, Some(200), log_body(H, 5, 6), 0)
            .unwrap()
            .unwrap();
        assert_eq!(
            s.on_reply(push.id, replied(409, 2), 0),
            Event::Failed {
                cluster: "r1".into(),
                seq: 5,
                last: 6,
                status: Some(409),
                retry_in_ms: 10
            }
        );
        assert!(s.poll(9).is_empty());
        let a = s.poll(10);
        assert!(a[0].is_retry);
        assert_eq!(fetch_of(&a[0]), (2, 4));
    }

    #[test]
    fn reply_showing_the_replica_has_the_first_write_settles_what_it_has() {
        let mut s = batching(&["r1"], 500);
        for seq in 1..=3 {
            s.push(write(seq));
        }
        let a = s.poll(0);
        let push = s
            .on_log(a[0].id, Some(200), log_body(H, 1, 3), 0)
            .unwrap()
            .unwrap();
        assert!(matches!(
            s.on_reply(push.id, replied(503, 2), 0),
            Event::Delivered { settled: 2, .. }
        ));
        assert!(matches!(&s.poll(0)[0].send, Send::Write(w) if w.seq == 3));
    }

    #[test]
    fn unusable_log_answer_falls_back_to_one_write_at_a_time() {
        let bad: [(Option<u32>, Vec<u8>); 5] = [
            (
                Some(410),
                br#"{"error":{"code":"ReplicationLogTruncated"}}"#.to_vec(),
            ),
            (Some(200), log_body(OTHER_HISTORY, 1, 2)),
            (Some(200), log_body(H, 2, 2)),
            (Some(200), b"{}".to_vec()),
            (None, Vec::new()),
        ];
        for (status, body) in bad {
            let mut s = batching(&["r1"], 500);
            s.push(write(1));
            s.push(write(2));
            let a = s.poll(0);
            assert_eq!(
                s.on_log(a[0].id, status, body, 5),
                Err(Event::BatchUnavailable {
                    cluster: "r1".into(),
                    status,
                    until_ms: 5 + BACKOFF.max_ms
                })
            );
            let single = s.poll(5);
            assert!(matches!(&single[0].send, Send::Write(w) if w.seq == 1));
            s.on_reply(single[0].id, ok(), 6);
            // Past the pause, batches again.
            s.push(write(3));
            assert!(matches!(
                s.poll(5 + BACKOFF.max_ms)[0].send,
                Send::FetchLog { after: 1, limit: 2 }
            ));
        }
    }

    const OTHER_HISTORY: &str = "ffeeddccbbaa99887766554433221100";

    #[test]
    fn lost_log_read_frees_the_lane_without_counting_a_replica_failure() {
        let mut s = batching(&["r1"], 500);
        s.push(write(1));
        s.push(write(2));
        let a = s.poll(0);
        let events = s.expire(TIMEOUT + LOST_REPLY_GRACE_MS);
        assert!(matches!(
            events.as_slice(),
            [Event::BatchUnavailable { status: None, .. }]
        ));
        assert_eq!(
            s.on_log(a[0].id, Some(200), log_body(H, 1, 2), 7_000),
            Err(Event::Stale)
        );
        let single = s.poll(TIMEOUT + LOST_REPLY_GRACE_MS);
        assert!(matches!(&single[0].send, Send::Write(w) if w.seq == 1 && !single[0].is_retry));
    }

    #[test]
    fn too_large_batch_halves_the_lanes_batch_size() {
        let mut s = batching(&["r1"], 8);
        for seq in 1..=8 {
            s.push(write(seq));
        }
        let a = s.poll(0);
        assert_eq!(fetch_of(&a[0]), (0, 8));
        let push = s
            .on_log(a[0].id, Some(200), log_body(H, 1, 8), 0)
            .unwrap()
            .unwrap();
        let reply = Outcome::Reply {
            status: 413,
            replica_seq: None,
        };
        assert!(matches!(
            s.on_reply(push.id, reply, 0),
            Event::Failed {
                status: Some(413),
                ..
            }
        ));
        assert_eq!(fetch_of(&s.poll(10)[0]), (0, 4));
    }

    #[test]
    fn log_answer_for_a_write_attempt_is_stale() {
        let mut s = batching(&["r1"], 500);
        s.push(write(1));
        let a = s.poll(0);
        assert_eq!(
            s.on_log(a[0].id, Some(200), log_body(H, 1, 1), 0),
            Err(Event::Stale)
        );
        assert!(matches!(
            s.on_reply(a[0].id, ok(), 0),
            Event::Delivered { .. }
        ));
    }

    /// A lane with writes 1..=3 queued whose batch (read from the log) is now
    /// on its way to the replica: the shipper and the push attempt.
    fn pushing_first_three() -> (Shipper, Attempt) {
        let mut s = batching(&["r1"], 500);
        for seq in 1..=3 {
            s.push(write(seq));
        }
        let a = s.poll(0);
        let push = s
            .on_log(a[0].id, Some(200), log_body(H, 1, 3), 0)
            .unwrap()
            .unwrap();
        (s, push)
    }

    /// Queues writes 4 to 6 behind the push of 1 to 3 and polls at `now`:
    /// the attempts that gives (the read ahead of 4 to 6, when one is due).
    fn queue_past_the_push(s: &mut Shipper, now: u64) -> Vec<Attempt> {
        for seq in 4..=6 {
            s.push(write(seq));
        }
        s.poll(now)
    }

    fn push_of(a: &Attempt) -> (u64, Vec<u8>) {
        match &a.send {
            Send::PushBatch {
                seq,
                body,
                read_ahead: true,
                ..
            } => (*seq, body.to_vec()),
            other => panic!("expected a batch push, got {other:?}"),
        }
    }

    #[test]
    fn read_ahead_range_waits_for_as_many_writes_as_are_in_flight() {
        assert_eq!(read_ahead_range(3, 3, 1, 4, 500), None);
        assert_eq!(read_ahead_range(3, 3, 2, 5, 500), None);
        assert_eq!(
            read_ahead_range(3, 3, 3, 6, 500),
            Some(BatchRange { after: 3, last: 6 })
        );
        // A single write in flight: two queued past it are enough.
        assert_eq!(read_ahead_range(7, 1, 1, 8, 500), None);
        assert_eq!(
            read_ahead_range(7, 1, 2, 9, 500),
            Some(BatchRange { after: 7, last: 9 })
        );
        // At most `limit` entries; none when batches are off.
        assert_eq!(
            read_ahead_range(0, 2, 900, 900, 500),
            Some(BatchRange {
                after: 0,
                last: 500
            })
        );
        assert_eq!(read_ahead_range(7, 1, 2, 9, 1), None);
    }

    #[test]
    fn next_batch_is_read_while_the_push_in_flight_runs_late() {
        let (mut s, _push) = pushing_first_three();
        s.push(write(4));
        s.push(write(5));
        assert!(
            s.poll(1).is_empty(),
            "fewer writes wait than the push carries: read them once it is back"
        );
        s.push(write(6));
        let ahead = s.poll(2);
        assert_eq!(ahead.len(), 1);
        assert_eq!(ahead[0].cluster, "r1");
        assert_eq!(fetch_of(&ahead[0]), (3, 3));
        assert!(s.poll(3).is_empty(), "one read ahead at a time");
    }

    #[test]
    fn batch_read_ahead_is_pushed_as_soon_as_the_push_in_flight_succeeds() {
        let (mut s, push) = pushing_first_three();
        let ahead = queue_past_the_push(&mut s, 1);
        assert_eq!(
            s.on_log(ahead[0].id, Some(200), log_body(H, 4, 6), 2),
            Ok(None),
            "kept until the push in flight is answered"
        );
        assert!(s.poll(3).is_empty(), "still one push in flight");
        assert!(matches!(
            s.on_reply(push.id, replied(204, 3), 4),
            Event::Delivered { settled: 3, .. }
        ));
        let next = s.poll(4);
        assert_eq!(next.len(), 1);
        assert_eq!(push_of(&next[0]), (6, log_body(H, 4, 6)));
        assert!(!next[0].is_retry);
        assert_eq!(
            s.on_reply(next[0].id, replied(204, 6), 5),
            Event::Delivered {
                cluster: "r1".into(),
                seq: 4,
                settled: 3
            }
        );
        assert!(!s.is_busy());
    }

    #[test]
    fn read_ahead_still_on_its_way_when_the_push_succeeds_is_pushed_on_arrival() {
        let (mut s, push) = pushing_first_three();
        let ahead = queue_past_the_push(&mut s, 1);
        s.on_reply(push.id, replied(204, 3), 2);
        assert!(
            s.poll(2).is_empty(),
            "the read already under way is waited for"
        );
        let next = s
            .on_log(ahead[0].id, Some(200), log_body(H, 4, 6), 3)
            .unwrap()
            .unwrap();
        assert_eq!(push_of(&next).0, 6);
    }

    #[test]
    fn read_ahead_is_dropped_when_the_push_in_flight_fails() {
        let (mut s, push) = pushing_first_three();
        let ahead = queue_past_the_push(&mut s, 1);
        assert_eq!(
            s.on_log(ahead[0].id, Some(200), log_body(H, 4, 6), 2),
            Ok(None)
        );
        assert!(matches!(
            s.on_reply(push.id, replied(409, 0), 3),
            Event::Failed {
                seq: 1,
                last: 3,
                ..
            }
        ));
        // The retry starts from where the replica stands, read afresh.
        let retry = s.poll(3 + 10);
        assert_eq!(retry.len(), 1);
        assert!(retry[0].is_retry);
        assert_eq!(fetch_of(&retry[0]), (0, 6));
    }

    #[test]
    fn read_ahead_answered_after_the_push_failed_is_stale() {
        let (mut s, push) = pushing_first_three();
        let ahead = queue_past_the_push(&mut s, 1);
        s.on_reply(push.id, Outcome::NoReply, 2);
        assert_eq!(
            s.on_log(ahead[0].id, Some(200), log_body(H, 4, 6), 3),
            Err(Event::Stale)
        );
        assert_eq!(fetch_of(&s.poll(2 + 10)[0]), (0, 6));
    }

    #[test]
    fn read_ahead_is_dropped_when_the_push_in_flight_times_out() {
        let (mut s, _push) = pushing_first_three();
        let ahead = queue_past_the_push(&mut s, TIMEOUT);
        assert_eq!(
            s.on_log(ahead[0].id, Some(200), log_body(H, 4, 6), TIMEOUT),
            Ok(None)
        );
        let events = s.expire(TIMEOUT + LOST_REPLY_GRACE_MS);
        assert!(matches!(
            events.as_slice(),
            [Event::Failed {
                seq: 1,
                status: None,
                ..
            }]
        ));
        let retry = s.poll(TIMEOUT + LOST_REPLY_GRACE_MS + 10);
        assert_eq!(fetch_of(&retry[0]), (0, 6));
    }

    #[test]
    fn reply_showing_only_part_of_the_push_applied_drops_the_read_ahead() {
        let (mut s, push) = pushing_first_three();
        let ahead = queue_past_the_push(&mut s, 1);
        s.on_log(ahead[0].id, Some(200), log_body(H, 4, 6), 2)
            .unwrap();
        // A 503 from a replica that holds seq 2 only: the read-ahead batch
        // (after 3) would leave a hole.
        assert!(matches!(
            s.on_reply(push.id, replied(503, 2), 3),
            Event::Delivered { settled: 2, .. }
        ));
        let next = s.poll(3);
        assert_eq!(fetch_of(&next[0]), (2, 4));
    }

    #[test]
    fn read_ahead_overtaken_by_other_workers_is_not_pushed() {
        let (mut s, push) = pushing_first_three();
        let ahead = queue_past_the_push(&mut s, 1);
        s.on_log(ahead[0].id, Some(200), log_body(H, 4, 6), 2)
            .unwrap();
        // The replica already holds seq 9: other workers delivered the rest.
        assert!(matches!(
            s.on_reply(push.id, replied(204, 9), 3),
            Event::Delivered { settled: 6, .. }
        ));
        assert!(s.poll(3).is_empty());
        assert!(!s.is_busy());
    }

    #[test]
    fn unusable_read_ahead_falls_back_to_one_write_at_a_time_after_the_push() {
        let (mut s, push) = pushing_first_three();
        let ahead = queue_past_the_push(&mut s, 1);
        assert_eq!(
            s.on_log(
                ahead[0].id,
                Some(410),
                br#"{"error":{"code":"ReplicationLogTruncated"}}"#.to_vec(),
                2
            ),
            Err(Event::BatchUnavailable {
                cluster: "r1".into(),
                status: Some(410),
                until_ms: 2 + BACKOFF.max_ms
            })
        );
        assert!(s.poll(2).is_empty(), "the push in flight goes on");
        assert!(matches!(
            s.on_reply(push.id, replied(204, 3), 3),
            Event::Delivered { settled: 3, .. }
        ));
        assert!(matches!(&s.poll(3)[0].send, Send::Write(w) if w.seq == 4));
    }

    #[test]
    fn read_ahead_of_another_history_is_not_kept() {
        let (mut s, _push) = pushing_first_three();
        let ahead = queue_past_the_push(&mut s, 1);
        assert!(matches!(
            s.on_log(ahead[0].id, Some(200), log_body(OTHER_HISTORY, 4, 6), 2),
            Err(Event::BatchUnavailable { .. })
        ));
        // Starting elsewhere than asked is refused too.
        let (mut s, _push) = pushing_first_three();
        let ahead = queue_past_the_push(&mut s, 1);
        assert!(matches!(
            s.on_log(ahead[0].id, Some(200), log_body(H, 5, 6), 2),
            Err(Event::BatchUnavailable { .. })
        ));
    }

    #[test]
    fn lost_read_ahead_is_given_up_without_failing_the_push() {
        let (mut s, push) = pushing_first_three();
        let ahead = queue_past_the_push(&mut s, 1);
        let late = 1 + TIMEOUT + LOST_REPLY_GRACE_MS;
        // The push is overdue too by then; answer it just before.
        assert!(matches!(
            s.on_reply(push.id, replied(204, 3), late - 1),
            Event::Delivered { .. }
        ));
        // Promoted to the lane's own log read, its loss ends like one.
        assert!(s.poll(late - 1).is_empty());
        let events = s.expire(late);
        assert!(matches!(
            events.as_slice(),
            [Event::BatchUnavailable { status: None, .. }]
        ));
        assert_eq!(
            s.on_log(ahead[0].id, Some(200), log_body(H, 4, 6), late),
            Err(Event::Stale)
        );
        assert!(matches!(&s.poll(late)[0].send, Send::Write(w) if w.seq == 4));
    }

    #[test]
    fn overdue_read_ahead_is_given_up_like_a_lost_log_read() {
        let (mut s, push) = pushing_first_three();
        let ahead = queue_past_the_push(&mut s, 500);
        let events = s.expire(500 + TIMEOUT + LOST_REPLY_GRACE_MS);
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(matches!(
            events[0],
            Event::BatchUnavailable { status: None, .. }
        ));
        assert!(matches!(events[1], Event::Failed { seq: 1, .. }));
        assert_eq!(s.on_reply(push.id, ok(), 0), Event::Stale);
        assert_eq!(
            s.on_log(ahead[0].id, Some(200), log_body(H, 4, 6), 0),
            Err(Event::Stale)
        );
    }

    #[test]
    fn undispatched_read_ahead_is_dropped_at_once() {
        let (mut s, push) = pushing_first_three();
        let ahead = queue_past_the_push(&mut s, 1);
        // What the root reports when the read could not be dispatched.
        assert!(matches!(
            s.on_reply(ahead[0].id, Outcome::NoReply, 1),
            Event::BatchUnavailable { status: None, .. }
        ));
        assert!(matches!(
            s.on_reply(push.id, replied(204, 3), 2),
            Event::Delivered { settled: 3, .. }
        ));
        assert!(matches!(&s.poll(2)[0].send, Send::Write(w) if w.seq == 4));
    }

    #[test]
    fn single_write_in_flight_also_gets_the_next_batch_read_ahead() {
        let mut s = batching(&["r1"], 500);
        s.push(write(1));
        let write_attempt = s.poll(0);
        assert!(matches!(&write_attempt[0].send, Send::Write(w) if w.seq == 1));
        s.push(write(2));
        s.push(write(3));
        let ahead = s.poll(1);
        assert_eq!(fetch_of(&ahead[0]), (1, 2));
        s.on_log(ahead[0].id, Some(200), log_body(H, 2, 3), 2)
            .unwrap();
        s.on_reply(write_attempt[0].id, ok(), 3);
        assert_eq!(push_of(&s.poll(3)[0]), (3, log_body(H, 2, 3)));
    }

    #[test]
    fn lane_with_a_read_ahead_pending_is_busy_and_detaching_drops_it() {
        let clusters = ["r1".to_owned()];
        let mut s = Shipper::new(&clusters, 1 << 20, BACKOFF, TIMEOUT, 100, 500);
        s.enqueue(write(1), 0);
        let first = s.poll(0);
        s.on_reply(first[0].id, Outcome::NoReply, 0);
        for seq in 2..=3 {
            s.enqueue(write(seq), 0);
        }
        let a = s.poll(50);
        let push = s
            .on_log(a[0].id, Some(200), log_body(H, 1, 3), 50)
            .unwrap()
            .unwrap();
        for seq in 4..=6 {
            s.enqueue(write(seq), 50);
        }
        let ahead = s.poll(50);
        assert_eq!(ahead.len(), 1);
        assert!(s.is_busy());
        assert!(matches!(
            s.on_reply(push.id, Outcome::NoReply, 100),
            Event::Detached { dropped: 6, .. }
        ));
        assert!(!s.is_busy());
        assert_eq!(
            s.on_log(ahead[0].id, Some(200), log_body(H, 4, 6), 100),
            Err(Event::Stale)
        );
    }
}
