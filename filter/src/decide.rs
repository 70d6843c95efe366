//! What to do with a request once its headers are known. Pure: the filter gathers
//! a [`RequestView`] from Envoy, calls [`decide`] and turns the [`Decision`] into
//! host calls.

use crate::config::{Config, Role};
use crate::proof::{self, Proof, ProofError};

/// The parts of a request the decision depends on.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    /// `:path` as the client sent it: path and query.
    pub path: &'a str,
    /// Every request header, duplicates kept, names as Envoy gives them (lowercase).
    pub headers: &'a [(String, String)],
    /// This node's wall clock, Unix ms, to judge the proof's timestamp.
    pub now_ms: u64,
}

/// The filter's answer to a request's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Replica, client write: answer 307 to the primary; nothing goes upstream.
    Redirect307 { location: String },
    /// Replica, write carrying a well-formed proof: hold the request until the
    /// whole body is there, check the signature, then forward it untouched.
    VerifyReplication { proof: Proof },
    /// Let the request through after removing `strip` (the raw names of every
    /// replication header it carries). `shadow`: a primary's API write, to be
    /// replicated if the backend applies it.
    Forward { strip: Vec<String>, shadow: bool },
    /// Replica, write whose replication headers are not a valid proof: 403.
    Reject403 { reason: ProofError },
    /// A client write to replikv's internal endpoints (`/replikv/...`), on
    /// either role: 403 `ReplicationForbidden`, nothing goes upstream.
    Forbidden { text: &'static str },
    /// `GET /replikv/replication`: the filter answers with the node's
    /// replication state itself.
    ServeStatus,
}

/// The path the filter answers itself with the node's replication state.
pub const STATUS_PATH: &str = "/replikv/replication";

/// The text of the 403 for a client write to an internal endpoint.
pub const INTERNAL_WRITE_TEXT: &str =
    "replikv's internal endpoints accept writes only from the primary's replication";

/// Decides what happens to a request; see docs/protocol.md for each role.
pub fn decide(config: &Config, req: &RequestView<'_>) -> Decision {
    let strip = replication_header_names(req.headers);
    let is_write = config.is_write(req.method);
    let path_only = req.path.split(['?', '#']).next().unwrap_or_default();
    if !is_write
        && path_only == STATUS_PATH
        && (req.method.eq_ignore_ascii_case("GET") || req.method.eq_ignore_ascii_case("HEAD"))
    {
        return Decision::ServeStatus;
    }
    let is_internal_write = is_write && is_internal_path(path_only);
    let is_api_write = is_write && !is_internal_write && is_api_path(config, req.path);
    match config.role {
        Role::Primary if is_internal_write => Decision::Forbidden {
            text: INTERNAL_WRITE_TEXT,
        },
        Role::Replica if is_internal_write && strip.is_empty() => Decision::Forbidden {
            text: INTERNAL_WRITE_TEXT,
        },
        Role::Primary => Decision::Forward {
            strip,
            shadow: is_api_write,
        },
        Role::Replica if !is_api_write && !is_internal_write => Decision::Forward {
            strip,
            shadow: false,
        },
        Role::Replica if strip.is_empty() => Decision::Redirect307 {
            location: format!(
                "{}{}",
                config.primary_url.as_deref().unwrap_or_default(),
                req.path
            ),
        },
        Role::Replica => {
            match proof::parse_proof(
                req.headers,
                &config.source_header,
                req.now_ms,
                config.max_clock_skew_ms,
            ) {
                Ok(proof) => Decision::VerifyReplication { proof },
                Err(reason) => Decision::Reject403 { reason },
            }
        }
    }
}

/// The distinct raw names of the replication headers among `headers`.
pub(crate) fn replication_header_names(headers: &[(String, String)]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (name, _) in headers {
        if proof::is_replication_header(name) && !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

/// Whether `path` (without query) names replikv's internal endpoints, or could
/// after a later stage resolves dot segments or escapes.
fn is_internal_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower == "/replikv"
        || lower.starts_with("/replikv/")
        || (is_ambiguous(path) && lower.contains("replikv"))
}

/// Whether `path` reaches the keyval API. A path whose meaning a later stage
/// could change (dot segments, doubled or back slashes, percent escapes) counts
/// as API too, so `/replikv/../api/...` cannot slip a write past a replica.
fn is_api_path(config: &Config, path: &str) -> bool {
    let path_only = path.split(['?', '#']).next().unwrap_or_default();
    config
        .api_prefixes
        .iter()
        .any(|p| path_only.starts_with(p.as_str()))
        || is_ambiguous(path_only)
}

fn is_ambiguous(path: &str) -> bool {
    path.contains('%')
        || path.contains('\\')
        || path.contains("//")
        || path
            .split('/')
            .any(|segment| segment == "." || segment == "..")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proof::{sign, SignedFields};

    const SECRET: &str = "0123456789abcdef-test-secret";
    const NOW: u64 = 1_700_000_000_000;
    const HISTORY_ID: &str = "00112233445566778899aabbccddeeff";

    fn config(json: &str) -> Config {
        Config::parse(json.as_bytes(), |_| Some(SECRET.to_owned())).unwrap()
    }

    fn replica() -> Config {
        config(r#"{"role":"replica","primary_url":"http://127.0.0.1:10001"}"#)
    }

    fn primary() -> Config {
        config(r#"{"role":"primary","replicas":["replica_1"]}"#)
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn run(config: &Config, method: &str, path: &str, headers: &[(String, String)]) -> Decision {
        decide(
            config,
            &RequestView {
                method,
                path,
                headers,
                now_ms: NOW,
            },
        )
    }

    fn signed_headers(method: &str, path: &str, body: &[u8]) -> Vec<(String, String)> {
        let f = SignedFields {
            method,
            path,
            history: HISTORY_ID,
            seq: 3,
            applied_at: NOW,
            timestamp: NOW,
        };
        let sig = sign(SECRET.as_bytes(), &f, body).unwrap();
        h(&[
            ("x-replication-source", "primary"),
            ("x-replication-history", HISTORY_ID),
            ("x-replication-seq", "3"),
            ("x-replication-applied-at", &NOW.to_string()),
            ("x-replication-timestamp", &NOW.to_string()),
            ("x-replication-signature", &sig),
        ])
    }

    #[test]
    fn write_on_replica_is_redirected_to_primary_with_path_and_query() {
        for method in ["POST", "PUT", "PATCH", "DELETE"] {
            let d = run(&replica(), method, "/api/9/http/keyvals/default?key=a", &[]);
            assert_eq!(
                d,
                Decision::Redirect307 {
                    location: "http://127.0.0.1:10001/api/9/http/keyvals/default?key=a".into()
                },
                "{method}"
            );
        }
    }

    #[test]
    fn write_on_replica_alias_prefix_keeps_the_alias_in_location() {
        let d = run(
            &replica(),
            "POST",
            "/replicated/9/http/keyvals/default",
            &[],
        );
        assert_eq!(
            d,
            Decision::Redirect307 {
                location: "http://127.0.0.1:10001/replicated/9/http/keyvals/default".into()
            }
        );
    }

    #[test]
    fn lowercase_write_method_on_replica_is_still_redirected() {
        assert!(matches!(
            run(&replica(), "post", "/api/9/http/keyvals/default", &[]),
            Decision::Redirect307 { .. }
        ));
    }

    #[test]
    fn read_on_replica_is_served_locally_without_replication_headers() {
        let headers = h(&[("x-replication-source", "primary"), ("accept", "*/*")]);
        let d = run(&replica(), "GET", "/api/9/http/keyvals/default", &headers);
        assert_eq!(
            d,
            Decision::Forward {
                strip: vec!["x-replication-source".into()],
                shadow: false
            }
        );
    }

    #[test]
    fn signed_write_on_replica_waits_for_body_verification() {
        let path = "/api/9/http/keyvals/default";
        let d = run(
            &replica(),
            "POST",
            path,
            &signed_headers("POST", path, b"{}"),
        );
        match d {
            Decision::VerifyReplication { proof } => {
                assert_eq!(proof.seq, 3);
                assert_eq!(proof.verify(SECRET.as_bytes(), "POST", path, b"{}"), Ok(()));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn forged_source_header_alone_on_replica_is_rejected() {
        let headers = h(&[("x-replication-source", "primary")]);
        let d = run(&replica(), "POST", "/api/9/http/keyvals/default", &headers);
        assert_eq!(
            d,
            Decision::Reject403 {
                reason: ProofError::Missing("x-replication-history".into())
            }
        );
    }

    #[test]
    fn duplicated_replication_header_on_replica_is_rejected() {
        let path = "/api/9/http/keyvals/default";
        let mut headers = signed_headers("POST", path, b"{}");
        headers.push(("x-replication-source".into(), "primary".into()));
        assert!(matches!(
            run(&replica(), "POST", path, &headers),
            Decision::Reject403 {
                reason: ProofError::Duplicate(_)
            }
        ));
    }

    #[test]
    fn underscore_alias_on_replica_write_is_rejected() {
        let headers = h(&[("x_replication_source", "primary")]);
        assert!(matches!(
            run(&replica(), "PATCH", "/api/9/http/keyvals/default", &headers),
            Decision::Reject403 { .. }
        ));
    }

    #[test]
    fn stale_proof_on_replica_is_rejected_before_the_body() {
        let path = "/api/9/http/keyvals/default";
        let headers = signed_headers("POST", path, b"{}");
        let d = decide(
            &replica(),
            &RequestView {
                method: "POST",
                path,
                headers: &headers,
                now_ms: NOW + 30_001,
            },
        );
        assert!(matches!(
            d,
            Decision::Reject403 {
                reason: ProofError::StaleTimestamp { .. }
            }
        ));
    }

    #[test]
    fn request_outside_api_only_loses_replication_headers() {
        let headers = h(&[
            ("X-Replication-Seq", "1"),
            ("x_replication_source", "primary"),
        ]);
        for config in [replica(), primary()] {
            let d = run(&config, "GET", "/replikv/status", &headers);
            assert_eq!(
                d,
                Decision::Forward {
                    strip: vec!["X-Replication-Seq".into(), "x_replication_source".into()],
                    shadow: false
                }
            );
        }
    }

    #[test]
    fn ambiguous_path_on_replica_is_treated_as_api() {
        for path in [
            "/replikv/../api/9/http/keyvals/default",
            "/replikv/%2e%2e/api/9/http/keyvals/default",
            "//api/9/http/keyvals/default",
        ] {
            assert!(
                matches!(
                    run(&replica(), "POST", path, &[]),
                    Decision::Redirect307 { .. } | Decision::Forbidden { .. }
                ),
                "{path}"
            );
        }
    }

    #[test]
    fn client_writes_to_internal_endpoints_are_forbidden_on_both_roles() {
        for config in [replica(), primary()] {
            for (method, path) in [
                ("PUT", "/replikv/snapshot"),
                ("POST", "/replikv/apply"),
                ("post", "/replikv/apply?x=1"),
                ("DELETE", "/replikv/status"),
                ("PUT", "/REPLIKV/snapshot"),
                ("PUT", "/replikv"),
            ] {
                assert_eq!(
                    run(&config, method, path, &[]),
                    Decision::Forbidden {
                        text: INTERNAL_WRITE_TEXT
                    },
                    "{method} {path}"
                );
            }
        }
    }

    #[test]
    fn signed_looking_internal_write_is_forbidden_on_the_primary() {
        let path = "/replikv/snapshot";
        let headers = signed_headers("PUT", path, b"{}");
        assert!(matches!(
            run(&primary(), "PUT", path, &headers),
            Decision::Forbidden { .. }
        ));
    }

    #[test]
    fn internal_write_with_a_proof_is_verified_on_a_replica() {
        for path in ["/replikv/apply", crate::replay::LIVE_BATCH_PATH] {
            let headers = signed_headers("POST", path, b"{}");
            assert!(matches!(
                run(&replica(), "POST", path, &headers),
                Decision::VerifyReplication { .. }
            ));
        }
        let forged = h(&[("x-replication-source", "primary")]);
        assert!(matches!(
            run(&replica(), "PUT", "/replikv/snapshot", &forged),
            Decision::Reject403 { .. }
        ));
    }

    #[test]
    fn status_path_is_served_by_the_filter() {
        for config in [replica(), primary()] {
            assert_eq!(
                run(&config, "GET", "/replikv/replication?x", &[]),
                Decision::ServeStatus
            );
        }
    }

    #[test]
    fn query_does_not_make_a_path_api() {
        let d = run(&replica(), "GET", "/replikv/status?x=/api/", &[]);
        assert_eq!(
            d,
            Decision::Forward {
                strip: vec![],
                shadow: false
            }
        );
    }

    #[test]
    fn write_on_primary_is_shadowed_and_stripped() {
        let headers = h(&[
            ("x-replication-source", "primary"),
            ("x-replication-source", "primary"),
            ("content-type", "application/json"),
        ]);
        let d = run(&primary(), "PATCH", "/api/9/http/keyvals/default", &headers);
        assert_eq!(
            d,
            Decision::Forward {
                strip: vec!["x-replication-source".into()],
                shadow: true
            }
        );
    }

    #[test]
    fn read_on_primary_is_not_shadowed() {
        for method in ["GET", "HEAD", "OPTIONS"] {
            assert_eq!(
                run(&primary(), method, "/api/9/http/keyvals/default", &[]),
                Decision::Forward {
                    strip: vec![],
                    shadow: false
                }
            );
        }
    }

    #[test]
    fn signed_looking_write_on_primary_is_stripped_not_trusted() {
        let path = "/api/9/http/keyvals/default";
        let headers = signed_headers("POST", path, b"{}");
        match run(&primary(), "POST", path, &headers) {
            Decision::Forward { strip, shadow } => {
                assert_eq!(strip.len(), 6);
                assert!(shadow);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
