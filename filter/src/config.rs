//! Plugin configuration: the JSON given to Envoy as the plugin's `configuration`,
//! parsed once in `on_configure` and validated before the filter serves anything.
//!
//! Parsing is pure: the secret is looked up through a caller-supplied function so
//! tests need no environment.

use serde::Deserialize;
use std::fmt;

/// Header prefix that marks replication traffic; see docs/protocol.md.
pub(crate) const REPLICATION_PREFIX: &str = "x-replication-";

/// The shortest secret accepted, in bytes; protocol.md asks for at least 16.
pub(crate) const MIN_SECRET_LEN: usize = 16;

/// Which side of replication this node's filter plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Applies client writes and ships them to every replica.
    Primary,
    /// Redirects client writes to the primary and applies proven shadow writes.
    Replica,
}

/// The configuration exactly as written by the operator. Every field but `role`
/// has a default; unknown fields are refused so a typo never goes unnoticed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    role: Role,
    #[serde(default)]
    primary_url: Option<String>,
    #[serde(default)]
    replicas: Vec<String>,
    #[serde(default = "default_source_header")]
    source_header: String,
    #[serde(default = "default_write_methods")]
    write_methods: Vec<String>,
    #[serde(default = "default_api_prefixes")]
    api_prefixes: Vec<String>,
    #[serde(default = "default_secret_env")]
    secret_env: String,
    #[serde(default = "default_max_clock_skew_ms")]
    max_clock_skew_ms: u64,
    #[serde(default = "default_shadow_timeout_ms")]
    shadow_timeout_ms: u64,
    #[serde(default = "default_retry_backoff_ms")]
    retry_backoff_ms: [u64; 2],
    #[serde(default = "default_max_queue_bytes")]
    max_queue_bytes: usize,
    #[serde(default = "default_backend_cluster")]
    backend_cluster: String,
    #[serde(default = "default_detach_after_ms")]
    detach_after_ms: u64,
    #[serde(default = "default_probe_interval_ms")]
    probe_interval_ms: u64,
    #[serde(default = "default_catchup_batch")]
    catchup_batch: u32,
    #[serde(default)]
    min_replica_acks: usize,
    #[serde(default = "default_replica_ack_timeout_ms")]
    replica_ack_timeout_ms: u64,
}

fn default_source_header() -> String {
    "x-replication-source".to_owned()
}

fn default_write_methods() -> Vec<String> {
    ["POST", "PUT", "PATCH", "DELETE"]
        .iter()
        .map(|m| (*m).to_owned())
        .collect()
}

fn default_api_prefixes() -> Vec<String> {
    vec!["/api/".to_owned(), "/replicated/".to_owned()]
}

fn default_secret_env() -> String {
    "REPLIKV_SECRET".to_owned()
}

fn default_max_clock_skew_ms() -> u64 {
    30_000
}

fn default_shadow_timeout_ms() -> u64 {
    5_000
}

fn default_retry_backoff_ms() -> [u64; 2] {
    [10, 1_000]
}

fn default_max_queue_bytes() -> usize {
    16 * 1024 * 1024
}

fn default_backend_cluster() -> String {
    "kv_backend".to_owned()
}

fn default_detach_after_ms() -> u64 {
    2_000
}

fn default_probe_interval_ms() -> u64 {
    1_000
}

fn default_catchup_batch() -> u32 {
    500
}

fn default_replica_ack_timeout_ms() -> u64 {
    2_000
}

/// Exponential retry delays for shadow writes: `first` ms, doubled per failed
/// attempt, never above `max` ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first_ms: u64,
    pub max_ms: u64,
}

impl Backoff {
    /// Delay before the retry that follows failed attempt number `failures` (1-based).
    pub fn delay_ms(&self, failures: u32) -> u64 {
        let shift = failures.saturating_sub(1).min(32);
        self.first_ms.saturating_mul(1u64 << shift).min(self.max_ms)
    }
}

/// The validated configuration the filter runs with.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    pub role: Role,
    /// `scheme://host[:port]` of the primary's public listener, without a trailing
    /// slash; required for replicas, where it is the base of every 307.
    pub primary_url: Option<String>,
    /// Envoy cluster names of the replicas a primary ships to.
    pub replicas: Vec<String>,
    /// Lowercase name of the header that says where a shadow write comes from.
    pub source_header: String,
    /// Uppercase HTTP methods that change data.
    pub write_methods: Vec<String>,
    /// Path prefixes that reach the keyval API (`/api/`, `/replicated/`).
    pub api_prefixes: Vec<String>,
    /// The HMAC key shared by primary and replicas.
    pub secret: Vec<u8>,
    pub max_clock_skew_ms: u64,
    pub shadow_timeout_ms: u64,
    pub retry_backoff: Backoff,
    pub max_queue_bytes: usize,
    /// The Envoy cluster of this node's own kv-backend (status, log, snapshot).
    pub backend_cluster: String,
    /// A replica whose shadow writes have failed for this long is detached: its
    /// queue is dropped and it catches up from the log instead.
    pub detach_after_ms: u64,
    /// How often the catch-up leader compares each replica with the primary.
    pub probe_interval_ms: u64,
    /// Log entries per catch-up batch.
    pub catchup_batch: u32,
    /// Replicas that must have applied a write before the primary answers it.
    pub min_replica_acks: usize,
    /// How long a write waits for those acknowledgements (and the longest a
    /// client may ask for with `x-replikv-ack-timeout-ms`).
    pub replica_ack_timeout_ms: u64,
}

// The secret must never reach a log line, so Debug is written by hand.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("role", &self.role)
            .field("primary_url", &self.primary_url)
            .field("replicas", &self.replicas)
            .field("source_header", &self.source_header)
            .field("write_methods", &self.write_methods)
            .field("api_prefixes", &self.api_prefixes)
            .field("secret", &"<redacted>")
            .field("max_clock_skew_ms", &self.max_clock_skew_ms)
            .field("shadow_timeout_ms", &self.shadow_timeout_ms)
            .field("retry_backoff", &self.retry_backoff)
            .field("max_queue_bytes", &self.max_queue_bytes)
            .field("backend_cluster", &self.backend_cluster)
            .field("detach_after_ms", &self.detach_after_ms)
            .field("probe_interval_ms", &self.probe_interval_ms)
            .field("catchup_batch", &self.catchup_batch)
            .field("min_replica_acks", &self.min_replica_acks)
            .field("replica_ack_timeout_ms", &self.replica_ack_timeout_ms)
            .finish()
    }
}

/// Why a configuration was refused; the text is one log line for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn refuse<T>(message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(message.into()))
}

impl Config {
    /// Parses and validates the plugin configuration. `env` looks up an
    /// environment variable (the filter passes `std::env::var`, which WASI
    /// serves from `vm_config.environment_variables`).
    pub fn parse(bytes: &[u8], env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_json::from_slice(bytes)
            .map_err(|e| ConfigError(format!("invalid plugin configuration JSON: {e}")))?;

        let primary_url = match (raw.role, raw.primary_url) {
            (Role::Replica, None) => return refuse("role \"replica\" needs \"primary_url\""),
            // A primary does not redirect, but a URL it is given must still be valid.
            (_, Some(url)) => Some(validate_primary_url(&url)?),
            (Role::Primary, None) => None,
        };

        if raw.role == Role::Replica && !raw.replicas.is_empty() {
            return refuse(
                "role \"replica\" must not list \"replicas\" (only the primary ships writes)",
            );
        }
        for (i, name) in raw.replicas.iter().enumerate() {
            if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return refuse(format!(
                    "\"replicas\"[{i}] is not an Envoy cluster name: {name:?}"
                ));
            }
            if raw.replicas[..i].contains(name) {
                return refuse(format!("\"replicas\" lists cluster {name:?} twice"));
            }
        }

        let source_header = raw.source_header.to_ascii_lowercase();
        if !source_header.starts_with(REPLICATION_PREFIX)
            || source_header.len() == REPLICATION_PREFIX.len()
        {
            return refuse(format!(
                "\"source_header\" must start with \"{REPLICATION_PREFIX}\": {:?}",
                raw.source_header
            ));
        }
        if !source_header.bytes().all(is_token_byte) {
            return refuse(format!(
                "\"source_header\" is not a header name: {:?}",
                raw.source_header
            ));
        }

        if raw.write_methods.is_empty() {
            return refuse("\"write_methods\" must not be empty");
        }
        for m in &raw.write_methods {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                return refuse(format!(
                    "\"write_methods\" entries must be uppercase methods: {m:?}"
                ));
            }
        }

        if raw.api_prefixes.is_empty() {
            return refuse("\"api_prefixes\" must not be empty");
        }
        for p in &raw.api_prefixes {
            if p.len() < 2 || !p.starts_with('/') || !p.ends_with('/') {
                return refuse(format!(
                    "\"api_prefixes\" entries must start and end with '/': {p:?}"
                ));
            }
        }

        if raw.secret_env.is_empty() {
            return refuse("\"secret_env\" must name an environment variable");
        }
        let secret = match env(&raw.secret_env) {
            None => {
                return refuse(format!(
                    "environment variable {} is not set in the VM (list it in vm_config.environment_variables.host_env_keys)",
                    raw.secret_env
                ))
            }
            Some(s) if s.len() < MIN_SECRET_LEN => {
                return refuse(format!(
                    "environment variable {} holds {} bytes; the replication secret needs at least {MIN_SECRET_LEN}",
                    raw.secret_env,
                    s.len()
                ))
            }
            Some(s) => s.into_bytes(),
        };

        if raw.max_clock_skew_ms == 0 {
            return refuse("\"max_clock_skew_ms\" must be positive");
        }
        if raw.shadow_timeout_ms == 0 || raw.shadow_timeout_ms > u64::from(u32::MAX) {
            return refuse("\"shadow_timeout_ms\" must be between 1 and 4294967295");
        }
        let [first_ms, max_ms] = raw.retry_backoff_ms;
        if first_ms == 0 || first_ms > max_ms {
            return refuse(format!(
                "\"retry_backoff_ms\" must be [first, max] with 0 < first <= max: [{first_ms}, {max_ms}]"
            ));
        }
        if raw.max_queue_bytes == 0 {
            return refuse("\"max_queue_bytes\" must be positive");
        }
        if raw.backend_cluster.is_empty()
            || raw
                .backend_cluster
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return refuse(format!(
                "\"backend_cluster\" is not an Envoy cluster name: {:?}",
                raw.backend_cluster
            ));
        }
        if raw.replicas.contains(&raw.backend_cluster) {
            return refuse("\"backend_cluster\" must not be one of the \"replicas\"");
        }
        if raw.detach_after_ms == 0 {
            return refuse("\"detach_after_ms\" must be positive");
        }
        if !(100..=60_000).contains(&raw.probe_interval_ms) {
            return refuse("\"probe_interval_ms\" must be between 100 and 60000");
        }
        if !(1..=10_000).contains(&raw.catchup_batch) {
            return refuse("\"catchup_batch\" must be between 1 and 10000");
        }
        if raw.min_replica_acks > raw.replicas.len() {
            return refuse(format!(
                "\"min_replica_acks\" is {} but only {} replicas are listed",
                raw.min_replica_acks,
                raw.replicas.len()
            ));
        }
        if raw.replica_ack_timeout_ms == 0 || raw.replica_ack_timeout_ms > u64::from(u32::MAX) {
            return refuse("\"replica_ack_timeout_ms\" must be between 1 and 4294967295");
        }

        Ok(Config {
            role: raw.role,
            primary_url,
            replicas: raw.replicas,
            source_header,
            write_methods: raw.write_methods,
            api_prefixes: raw.api_prefixes,
            secret,
            max_clock_skew_ms: raw.max_clock_skew_ms,
            shadow_timeout_ms: raw.shadow_timeout_ms,
            retry_backoff: Backoff { first_ms, max_ms },
            max_queue_bytes: raw.max_queue_bytes,
            backend_cluster: raw.backend_cluster,
            detach_after_ms: raw.detach_after_ms,
            probe_interval_ms: raw.probe_interval_ms,
            catchup_batch: raw.catchup_batch,
            min_replica_acks: raw.min_replica_acks,
            replica_ack_timeout_ms: raw.replica_ack_timeout_ms,
        })
    }

    /// Whether `method` changes data. Methods are compared without regard to case
    /// so that `post` cannot slip past a replica as a read.
    pub fn is_write(&self, method: &str) -> bool {
        self.write_methods
            .iter()
            .any(|m| m.eq_ignore_ascii_case(method))
    }
}

/// RFC 9110 token characters, the ones a header name may use.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Accepts `http(s)://host[:port]`, with at most one trailing `/` that is removed.
fn validate_primary_url(url: &str) -> Result<String, ConfigError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    let Some(rest) = rest else {
        return refuse(format!(
            "\"primary_url\" must start with http:// or https://: {url:?}"
        ));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() {
        return refuse(format!("\"primary_url\" has no host: {url:?}"));
    }
    if authority
        .chars()
        .any(|c| matches!(c, '/' | '?' | '#' | '@') || c.is_whitespace() || c.is_control())
    {
        return refuse(format!(
            "\"primary_url\" must be scheme://host[:port] with no path, query or user: {url:?}"
        ));
    }
    // A port, when present, must be a number; IPv6 literals keep their brackets.
    let host_port = authority;
    if let Some(idx) = host_port.rfind(':') {
        let (host, port) = (&host_port[..idx], &host_port[idx + 1..]);
        let is_v6_without_port = host_port.starts_with('[') && !host.ends_with(']');
        if !is_v6_without_port && (host.is_empty() || port.parse::<u16>().is_err()) {
            return refuse(format!(
                "\"primary_url\" has an invalid host or port: {url:?}"
            ));
        }
    }
    Ok(url.strip_suffix('/').unwrap_or(url).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef-test-secret";

    fn env_with_secret(name: &str) -> Option<String> {
        (name == "REPLIKV_SECRET").then(|| SECRET.to_owned())
    }

    fn parse(json: &str) -> Result<Config, ConfigError> {
        Config::parse(json.as_bytes(), env_with_secret)
    }

    fn refusal(json: &str) -> String {
        match parse(json) {
            Ok(c) => panic!("config accepted: {c:?}"),
            Err(e) => e.0,
        }
    }

    #[test]
    fn primary_with_only_role_gets_documented_defaults() {
        let c = parse(r#"{"role":"primary"}"#).unwrap();
        assert_eq!(c.role, Role::Primary);
        assert!(c.replicas.is_empty());
        assert_eq!(c.source_header, "x-replication-source");
        assert_eq!(c.write_methods, ["POST", "PUT", "PATCH", "DELETE"]);
        assert_eq!(c.api_prefixes, ["/api/", "/replicated/"]);
        assert_eq!(c.secret, SECRET.as_bytes());
        assert_eq!(c.max_clock_skew_ms, 30_000);
        assert_eq!(c.shadow_timeout_ms, 5_000);
        assert_eq!(
            c.retry_backoff,
            Backoff {
                first_ms: 10,
                max_ms: 1_000
            }
        );
        assert_eq!(c.max_queue_bytes, 16_777_216);
    }

    #[test]
    fn full_example_from_the_docs_is_accepted() {
        let c = parse(
            r#"{"role":"primary","replicas":["replica_1","replica_2"],
                "source_header":"X-Replication-Source","write_methods":["POST","PUT","PATCH","DELETE"],
                "api_prefixes":["/api/","/replicated/"],"secret_env":"REPLIKV_SECRET",
                "max_clock_skew_ms":30000,"shadow_timeout_ms":5000,"retry_backoff_ms":[10,1000],
                "max_queue_bytes":16777216}"#,
        )
        .unwrap();
        assert_eq!(c.replicas, ["replica_1", "replica_2"]);
        assert_eq!(c.source_header, "x-replication-source");
    }

    #[test]
    fn replica_keeps_primary_url_without_trailing_slash() {
        let c = parse(r#"{"role":"replica","primary_url":"http://127.0.0.1:10001/"}"#).unwrap();
        assert_eq!(c.primary_url.as_deref(), Some("http://127.0.0.1:10001"));
        let c =
            parse(r#"{"role":"replica","primary_url":"https://primary.service.consul"}"#).unwrap();
        assert_eq!(
            c.primary_url.as_deref(),
            Some("https://primary.service.consul")
        );
    }

    #[test]
    fn unknown_field_is_refused() {
        assert!(refusal(r#"{"role":"primary","replica":["x"]}"#).contains("unknown field"));
    }

    #[test]
    fn missing_role_is_refused() {
        assert!(refusal(r#"{}"#).contains("role"));
    }

    #[test]
    fn replica_without_primary_url_is_refused() {
        assert!(refusal(r#"{"role":"replica"}"#).contains("primary_url"));
    }

    #[test]
    fn primary_url_with_path_or_bad_scheme_is_refused() {
        for url in [
            "http://p:10001/api",
            "ftp://p",
            "p:10001",
            "http://",
            "http://p:port",
            "http://u@p",
            "http://p?x=1",
        ] {
            let json = format!(r#"{{"role":"replica","primary_url":"{url}"}}"#);
            assert!(refusal(&json).contains("primary_url"), "{url}");
        }
    }

    #[test]
    fn replica_listing_replicas_is_refused() {
        let msg = refusal(r#"{"role":"replica","primary_url":"http://p","replicas":["r"]}"#);
        assert!(msg.contains("replicas"), "{msg}");
    }

    #[test]
    fn duplicate_replica_cluster_is_refused() {
        assert!(refusal(r#"{"role":"primary","replicas":["r","r"]}"#).contains("twice"));
    }

    #[test]
    fn source_header_outside_replication_namespace_is_refused() {
        assert!(
            refusal(r#"{"role":"primary","source_header":"x-source"}"#).contains("source_header")
        );
        assert!(
            refusal(r#"{"role":"primary","source_header":"x-replication-"}"#)
                .contains("source_header")
        );
    }

    #[test]
    fn lowercase_or_empty_write_methods_are_refused() {
        assert!(refusal(r#"{"role":"primary","write_methods":[]}"#).contains("write_methods"));
        assert!(refusal(r#"{"role":"primary","write_methods":["post"]}"#).contains("write_methods"));
    }

    #[test]
    fn prefix_without_slashes_is_refused() {
        assert!(refusal(r#"{"role":"primary","api_prefixes":["/api"]}"#).contains("api_prefixes"));
        assert!(refusal(r#"{"role":"primary","api_prefixes":["api/"]}"#).contains("api_prefixes"));
    }

    #[test]
    fn missing_secret_is_refused_naming_the_variable() {
        let err = Config::parse(br#"{"role":"primary"}"#, |_| None).unwrap_err();
        assert!(err.0.contains("REPLIKV_SECRET"), "{err}");
    }

    #[test]
    fn short_secret_is_refused() {
        let err = Config::parse(br#"{"role":"primary"}"#, |_| Some("short".into())).unwrap_err();
        assert!(err.0.contains("at least 16"), "{err}");
    }

    #[test]
    fn secret_env_name_is_configurable() {
        let c = Config::parse(br#"{"role":"primary","secret_env":"OTHER"}"#, |k| {
            (k == "OTHER").then(|| "s".repeat(16))
        })
        .unwrap();
        assert_eq!(c.secret.len(), 16);
    }

    #[test]
    fn inverted_backoff_is_refused() {
        assert!(refusal(r#"{"role":"primary","retry_backoff_ms":[100,10]}"#)
            .contains("retry_backoff_ms"));
        assert!(
            refusal(r#"{"role":"primary","retry_backoff_ms":[0,10]}"#).contains("retry_backoff_ms")
        );
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let c = parse(r#"{"role":"primary"}"#).unwrap();
        assert!(!format!("{c:?}").contains(SECRET));
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let b = Backoff {
            first_ms: 10,
            max_ms: 1_000,
        };
        let delays: Vec<u64> = (1..=9).map(|n| b.delay_ms(n)).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(b.delay_ms(u32::MAX), 1000);
    }

    #[test]
    fn replication_fields_have_defaults_and_bounds() {
        let c = parse(r#"{"role":"primary","replicas":["r1"]}"#).unwrap();
        assert_eq!(c.backend_cluster, "kv_backend");
        assert_eq!(c.detach_after_ms, 2_000);
        assert_eq!(c.probe_interval_ms, 1_000);
        assert_eq!(c.catchup_batch, 500);
        assert_eq!(c.min_replica_acks, 0);
        assert_eq!(c.replica_ack_timeout_ms, 2_000);
        let c = parse(
            r#"{"role":"primary","replicas":["r1","r2"],"min_replica_acks":2,"replica_ack_timeout_ms":500}"#,
        )
        .unwrap();
        assert_eq!((c.min_replica_acks, c.replica_ack_timeout_ms), (2, 500));
        assert!(
            refusal(r#"{"role":"primary","replicas":["r1"],"min_replica_acks":2}"#)
                .contains("only 1 replicas")
        );
        assert!(
            refusal(r#"{"role":"primary","probe_interval_ms":5}"#).contains("probe_interval_ms")
        );
        assert!(refusal(r#"{"role":"primary","catchup_batch":0}"#).contains("catchup_batch"));
        assert!(
            refusal(r#"{"role":"primary","replicas":["kv_backend"]}"#).contains("backend_cluster")
        );
    }

    #[test]
    fn write_methods_match_without_regard_to_case() {
        let c = parse(r#"{"role":"primary"}"#).unwrap();
        assert!(c.is_write("post"));
        assert!(c.is_write("DELETE"));
        assert!(!c.is_write("GET"));
    }
}
