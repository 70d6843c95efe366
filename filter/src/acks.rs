//! K-replica acknowledgement (like Redis `WAIT` / `min-replicas-to-write`): a
//! client write whose response the primary holds until `k` replicas have
//! applied its seq, or a timeout. Pure bookkeeping; the HTTP context registers
//! a waiter and pauses its response, the root resolves waiters from what it
//! learns (shipper replies, catch-up) and resumes or answers the paused stream.

use std::collections::BTreeMap;

/// Client header asking for more acknowledgements than the configured minimum.
pub const MIN_ACKS_HEADER: &str = "x-replikv-min-acks";
/// Client header asking for a shorter wait than the configured timeout.
pub const ACK_TIMEOUT_HEADER: &str = "x-replikv-ack-timeout-ms";

/// What one write waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckWait {
    pub k: usize,
    pub timeout_ms: u64,
}

/// The wait a client write asks for: the configured minimum, raised (never
/// lowered) by `x-replikv-min-acks`; the configured timeout, shortened (never
/// lengthened) by `x-replikv-ack-timeout-ms`. An invalid header or more
/// acknowledgements than there are replicas is an error (answered 400 before
/// the write is applied).
pub fn requested(
    min_acks: usize,
    timeout_ms: u64,
    replicas: usize,
    headers: &[(String, String)],
) -> Result<AckWait, String> {
    let mut wait = AckWait {
        k: min_acks,
        timeout_ms,
    };
    let mut seen = [false; 2];
    for (name, value) in headers {
        let slot = if name.eq_ignore_ascii_case(MIN_ACKS_HEADER) {
            0
        } else if name.eq_ignore_ascii_case(ACK_TIMEOUT_HEADER) {
            1
        } else {
            continue;
        };
        if std::mem::replace(&mut seen[slot], true) {
            return Err(format!("header {name} appears more than once"));
        }
        let number = crate::proof::parse_decimal(value.trim())
            .ok_or_else(|| format!("header {name} must be a whole number"))?;
        if slot == 0 {
            let k = usize::try_from(number).unwrap_or(usize::MAX);
            if k > replicas {
                return Err(format!(
                    "{MIN_ACKS_HEADER} is {k} but this primary has {replicas} replicas"
                ));
            }
            wait.k = wait.k.max(k);
        } else {
            if number == 0 {
                return Err(format!("{ACK_TIMEOUT_HEADER} must be positive"));
            }
            wait.timeout_ms = wait.timeout_ms.min(number);
        }
    }
    Ok(wait)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Waiter {
    seq: u64,
    k: usize,
    deadline_ms: u64,
}

/// How a waiter ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Enough replicas have the write: let the response go.
    Acked { context_id: u32 },
    /// The time ran out with `acks` of `k`.
    TimedOut {
        context_id: u32,
        seq: u64,
        acks: usize,
        k: usize,
    },
}

/// The waiting writes of one VM, by HTTP context id.
#[derive(Debug, Default)]
pub struct AckBook {
    waiters: BTreeMap<u32, Waiter>,
}

impl AckBook {
    pub fn wait(&mut self, context_id: u32, seq: u64, wait: AckWait, now_ms: u64) {
        self.waiters.insert(
            context_id,
            Waiter {
                seq,
                k: wait.k,
                deadline_ms: now_ms.saturating_add(wait.timeout_ms),
            },
        );
    }

    /// Forgets a waiter whose stream ended.
    pub fn cancel(&mut self, context_id: u32) {
        self.waiters.remove(&context_id);
    }

    pub fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    /// Resolves every waiter that `confirmed` (each replica's highest known
    /// seq) satisfies, or whose deadline passed.
    pub fn resolve(&mut self, confirmed: &[u64], now_ms: u64) -> Vec<Resolution> {
        let mut out = Vec::new();
        self.waiters.retain(|&context_id, w| {
            let acks = confirmed.iter().filter(|&&c| c >= w.seq).count();
            if acks >= w.k {
                out.push(Resolution::Acked { context_id });
                false
            } else if now_ms >= w.deadline_ms {
                out.push(Resolution::TimedOut {
                    context_id,
                    seq: w.seq,
                    acks,
                    k: w.k,
                });
                false
            } else {
                true
            }
        });
        out
    }
}

/// The `text` of the error a timed-out write gets.
pub fn timeout_text(seq: u64, acks: usize, k: usize, timeout_ms: u64) -> String {
    format!(
        "the write WAS applied on the primary (seq {seq}) but only {acks} of the {k} required replicas confirmed it within {timeout_ms} ms; it will still reach every replica"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn configured_wait_applies_without_headers() {
        assert_eq!(
            requested(1, 2_000, 2, &[]),
            Ok(AckWait {
                k: 1,
                timeout_ms: 2_000
            })
        );
    }

    #[test]
    fn headers_raise_k_and_shorten_the_timeout_only() {
        let w = requested(
            1,
            2_000,
            2,
            &h(&[(MIN_ACKS_HEADER, "2"), (ACK_TIMEOUT_HEADER, "500")]),
        );
        assert_eq!(
            w,
            Ok(AckWait {
                k: 2,
                timeout_ms: 500
            })
        );
        let w = requested(
            1,
            2_000,
            2,
            &h(&[(MIN_ACKS_HEADER, "0"), (ACK_TIMEOUT_HEADER, "9000")]),
        );
        assert_eq!(
            w,
            Ok(AckWait {
                k: 1,
                timeout_ms: 2_000
            })
        );
    }

    #[test]
    fn bad_headers_are_errors() {
        for headers in [
            h(&[(MIN_ACKS_HEADER, "3")]),
            h(&[(MIN_ACKS_HEADER, "-1")]),
            h(&[(MIN_ACKS_HEADER, "1"), ("X-Replikv-Min-Acks", "1")]),
            h(&[(ACK_TIMEOUT_HEADER, "0")]),
        ] {
            assert!(requested(0, 2_000, 2, &headers).is_err(), "{headers:?}");
        }
    }

    #[test]
    fn waiter_is_acked_once_k_replicas_have_its_seq() {
        let mut book = AckBook::default();
        book.wait(
            7,
            10,
            AckWait {
                k: 2,
                timeout_ms: 100,
            },
            0,
        );
        assert!(book.resolve(&[10, 9], 50).is_empty());
        assert_eq!(
            book.resolve(&[10, 12], 60),
            [Resolution::Acked { context_id: 7 }]
        );
        assert!(book.is_empty());
    }

    #[test]
    fn waiter_times_out_with_the_count_it_reached() {
        let mut book = AckBook::default();
        book.wait(
            7,
            10,
            AckWait {
                k: 2,
                timeout_ms: 100,
            },
            0,
        );
        assert_eq!(
            book.resolve(&[11, 3], 100),
            [Resolution::TimedOut {
                context_id: 7,
                seq: 10,
                acks: 1,
                k: 2
            }]
        );
    }

    #[test]
    fn cancelled_waiter_disappears() {
        let mut book = AckBook::default();
        book.wait(
            7,
            10,
            AckWait {
                k: 1,
                timeout_ms: 100,
            },
            0,
        );
        book.cancel(7);
        assert!(book.resolve(&[], 1_000).is_empty());
    }

    #[test]
    fn timeout_text_says_the_write_was_applied() {
        let t = timeout_text(5, 0, 1, 1_000);
        assert!(t.contains("WAS applied on the primary"), "{t}");
        assert!(t.contains("0 of the 1"), "{t}");
    }
}
