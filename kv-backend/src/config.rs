//! Command line and environment: the flags of `kv-backend` and the parsers for
//! zone specs (`[stream:]NAME:SIZE[:timeout=DUR][:type=string|ip|prefix]`),
//! sizes (`32k`, `1m`) and durations (`500ms`, `10s`, `1h30m`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::zone::{KeyType, ZoneConfig, ZoneId, ZoneKind};

/// Size of the zone `default` that exists out of the box (as in the article).
pub const DEFAULT_ZONE_SIZE: u64 = 32 * 1024;

/// Default cap on a request body; larger bodies are answered 413.
pub const DEFAULT_MAX_BODY: u64 = 1024 * 1024;

/// Default number of applied writes kept in the durable replication log.
pub const DEFAULT_LOG_CAPACITY: u64 = 100_000;

/// Most write operations one group commit takes from the queue.
pub const DEFAULT_MAX_BATCH: usize = 512;

/// Where the read-only mount of the API lives unless `--read-only-prefix` says otherwise.
pub const DEFAULT_READ_ONLY_PREFIX: &str = "/ro";

/// The flags of the `kv-backend` binary; each also reads an environment variable.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "kv-backend",
    version,
    about = "replikv's durable NGINX Plus keyval API backend"
)]
pub struct Cli {
    /// Address to bind (port 0 picks a free one; the bound address is printed).
    #[arg(long, env = "REPLIKV_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,

    /// Directory of the durable store (created if missing).
    #[arg(long, env = "REPLIKV_DATA_DIR")]
    pub data_dir: PathBuf,

    /// Zone spec `[stream:]NAME:SIZE[:timeout=DUR][:type=string|ip|prefix]`, repeatable.
    #[arg(long = "zone", env = "REPLIKV_ZONES", value_delimiter = ',', value_parser = parse_zone_spec)]
    pub zones: Vec<ZoneConfig>,

    /// Applied writes kept in the durable replication log.
    #[arg(long, env = "REPLIKV_LOG_CAPACITY", default_value_t = DEFAULT_LOG_CAPACITY)]
    pub log_capacity: u64,

    /// Largest accepted request body (`1m`, `64k`, bytes).
    #[arg(long, env = "REPLIKV_MAX_BODY", default_value = "1m", value_parser = parse_size)]
    pub max_body: u64,

    /// Commit every write on its own instead of grouping concurrent writes (benchmarks).
    #[arg(long, env = "REPLIKV_NO_GROUP_COMMIT")]
    pub no_group_commit: bool,

    /// Path prefix of the read-only mount (NGINX `api write=off`): the API again,
    /// every write 405. An empty value turns the mount off.
    #[arg(long, env = "REPLIKV_READ_ONLY_PREFIX", default_value = DEFAULT_READ_ONLY_PREFIX)]
    pub read_only_prefix: String,
}

/// Everything the server needs, resolved from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory of the durable store.
    pub data_dir: PathBuf,
    /// The configured zones, `default` included.
    pub zones: Vec<ZoneConfig>,
    /// Applied writes kept in the replication log.
    pub log_capacity: u64,
    /// Largest accepted request body in bytes.
    pub max_body: u64,
    /// Whether concurrent writes share one commit.
    pub group_commit: bool,
    /// Path prefix of the read-only mount (`/ro`), if any.
    pub read_only_prefix: Option<String>,
}

impl Config {
    /// A config with only the zone `default`, for tests and embedding.
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            zones: resolve_zones(Vec::new()).unwrap_or_default(),
            log_capacity: DEFAULT_LOG_CAPACITY,
            max_body: DEFAULT_MAX_BODY,
            group_commit: true,
            read_only_prefix: Some(DEFAULT_READ_ONLY_PREFIX.to_owned()),
        }
    }

    /// Adds (or replaces) a zone, builder style.
    pub fn with_zone(mut self, zone: ZoneConfig) -> Config {
        self.zones.retain(|z| z.id != zone.id);
        self.zones.push(zone);
        self
    }

    /// Resolves the command line: adds zone `default` unless replaced, refuses duplicates.
    pub fn from_cli(cli: Cli) -> Result<Config, String> {
        Ok(Config {
            data_dir: cli.data_dir,
            zones: resolve_zones(cli.zones)?,
            log_capacity: cli.log_capacity,
            max_body: cli.max_body,
            group_commit: !cli.no_group_commit,
            read_only_prefix: parse_read_only_prefix(&cli.read_only_prefix)?,
        })
    }
}

/// Checks a `--read-only-prefix`: empty (no mount) or `/SEGMENT[/SEGMENT...]` of
/// `A-Z a-z 0-9 _ - .`, without a trailing slash, not clashing with `/api` or `/replikv`.
pub fn parse_read_only_prefix(text: &str) -> Result<Option<String>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    let valid = text.strip_prefix('/').is_some_and(|rest| {
        rest.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        })
    });
    if !valid {
        return Err(format!(
            "read-only prefix {text:?}: must look like /ro or /api-ro (no trailing slash)"
        ));
    }
    let first = text.split('/').nth(1).unwrap_or_default();
    if matches!(first, "api" | "replikv" | "replicated") {
        return Err(format!(
            "read-only prefix {text:?}: /api, /replikv and /replicated are taken"
        ));
    }
    Ok(Some(text.to_owned()))
}

/// The built-in zone `default`: 32 KiB, string keys, no timeout.
pub fn default_zone() -> ZoneConfig {
    ZoneConfig {
        id: ZoneId::http("default"),
        size: DEFAULT_ZONE_SIZE,
        timeout_ms: None,
        key_type: KeyType::String,
    }
}

fn resolve_zones(specs: Vec<ZoneConfig>) -> Result<Vec<ZoneConfig>, String> {
    let mut zones: Vec<ZoneConfig> = Vec::with_capacity(specs.len() + 1);
    for zone in specs {
        if zones.iter().any(|z| z.id == zone.id) {
            return Err(format!("zone {} is configured twice", zone.id));
        }
        zones.push(zone);
    }
    let default = default_zone();
    if !zones.iter().any(|z| z.id == default.id) {
        zones.insert(0, default);
    }
    Ok(zones)
}

/// Parses `[stream:|http:]NAME:SIZE[:timeout=DUR][:type=string|ip|prefix]`.
pub fn parse_zone_spec(spec: &str) -> Result<ZoneConfig, String> {
    let (kind, rest) = if let Some(rest) = spec.strip_prefix("stream:") {
        (ZoneKind::Stream, rest)
    } else if let Some(rest) = spec.strip_prefix("http:") {
        (ZoneKind::Http, rest)
    } else {
        (ZoneKind::Http, spec)
    };
    let mut parts = rest.split(':');
    let name = parts.next().unwrap_or_default();
    if !is_valid_zone_name(name) {
        return Err(format!(
            "zone spec {spec:?}: name must be 1-64 characters of A-Z a-z 0-9 _ - ."
        ));
    }
    let size = parts
        .next()
        .ok_or_else(|| format!("zone spec {spec:?}: missing SIZE (e.g. {name}:32k)"))
        .and_then(|s| parse_size(s).map_err(|e| format!("zone spec {spec:?}: {e}")))?;
    let mut timeout_ms = None;
    let mut key_type = KeyType::String;
    for option in parts {
        if let Some(value) = option.strip_prefix("timeout=") {
            let ms = parse_duration_ms(value).map_err(|e| format!("zone spec {spec:?}: {e}"))?;
            if ms == 0 {
                return Err(format!("zone spec {spec:?}: timeout must be positive"));
            }
            timeout_ms = Some(ms);
        } else if let Some(value) = option.strip_prefix("type=") {
            key_type = match value {
                "string" => KeyType::String,
                "ip" => KeyType::Ip,
                "prefix" => KeyType::Prefix,
                other => {
                    return Err(format!(
                        "zone spec {spec:?}: unknown type {other:?} (string, ip or prefix)"
                    ))
                }
            };
        } else {
            return Err(format!(
                "zone spec {spec:?}: unknown option {option:?} (timeout=DUR or type=T)"
            ));
        }
    }
    Ok(ZoneConfig {
        id: ZoneId {
            kind,
            name: name.to_owned(),
        },
        size,
        timeout_ms,
        key_type,
    })
}

fn is_valid_zone_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Parses a size: bytes, or a number with `k`, `m` or `g` (powers of 1024), case-insensitive.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let (digits, multiplier) = match lower.as_bytes().last() {
        Some(b'k') => (&lower[..lower.len() - 1], 1u64 << 10),
        Some(b'm') => (&lower[..lower.len() - 1], 1 << 20),
        Some(b'g') => (&lower[..lower.len() - 1], 1 << 30),
        _ => (lower.as_str(), 1),
    };
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size {text:?} (e.g. 32k, 1m, 4096)"))?;
    match number.checked_mul(multiplier) {
        Some(0) => Err(format!("size {text:?} must be positive")),
        Some(bytes) => Ok(bytes),
        None => Err(format!("size {text:?} is too large")),
    }
}

/// Parses a duration into milliseconds: `500ms`, `10s`, `10m`, `1h`, `1d`, and
/// NGINX-style combinations such as `1h30m`; a bare number means seconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let invalid = || format!("invalid duration {text:?} (e.g. 500ms, 10s, 10m, 1h)");
    let text = text.trim();
    if text.is_empty() {
        return Err(invalid());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        let seconds: u64 = text.parse().map_err(|_| invalid())?;
        return seconds.checked_mul(1000).ok_or_else(invalid);
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(invalid());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60 * 1000,
            "h" => 60 * 60 * 1000,
            "d" => 24 * 60 * 60 * 1000,
            _ => return Err(invalid()),
        };
        rest = &rest[unit_len..];
        total = number
            .checked_mul(unit_ms)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(invalid)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_bytes_and_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("32k"), Ok(32 * 1024));
        assert_eq!(parse_size("1M"), Ok(1024 * 1024));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("12x").is_err());
        assert!(parse_size("99999999999999999999g").is_err());
    }

    #[test]
    fn durations_accept_nginx_units_and_combinations() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("10s"), Ok(10_000));
        assert_eq!(parse_duration_ms("10m"), Ok(600_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration_ms("7"), Ok(7_000));
        assert!(parse_duration_ms("").is_err());
        assert!(parse_duration_ms("10x").is_err());
        assert!(parse_duration_ms("ms").is_err());
    }

    #[test]
    fn zone_spec_reads_name_size_timeout_and_type() {
        let zone = parse_zone_spec("sessions:1m:timeout=10m:type=ip").unwrap();
        assert_eq!(zone.id, ZoneId::http("sessions"));
        assert_eq!(zone.size, 1 << 20);
        assert_eq!(zone.timeout_ms, Some(600_000));
        assert_eq!(zone.key_type, KeyType::Ip);
    }

    #[test]
    fn zone_spec_with_stream_prefix_is_a_stream_zone() {
        let zone = parse_zone_spec("stream:s:1m").unwrap();
        assert_eq!(zone.id.kind, ZoneKind::Stream);
        assert_eq!(zone.id.name, "s");
    }

    #[test]
    fn zone_spec_refuses_bad_parts() {
        for bad in [
            "",
            "a",
            ":1m",
            "a:b",
            "a:1m:timeout=",
            "a:1m:timeout=0s",
            "a:1m:type=x",
            "a:1m:ttl=1s",
            "a/b:1m",
        ] {
            assert!(parse_zone_spec(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn zone_default_exists_unless_replaced_and_duplicates_are_refused() {
        let zones = resolve_zones(vec![parse_zone_spec("one:1m").unwrap()]).unwrap();
        assert!(zones.iter().any(|z| z.id == ZoneId::http("default")));
        let zones = resolve_zones(vec![parse_zone_spec("default:1m").unwrap()]).unwrap();
        assert_eq!(zones.len(), 1);
        assert_eq!(zones[0].size, 1 << 20);
        let twice = vec![
            parse_zone_spec("a:1m").unwrap(),
            parse_zone_spec("a:2m").unwrap(),
        ];
        assert!(resolve_zones(twice).is_err());
        let both_kinds = vec![
            parse_zone_spec("a:1m").unwrap(),
            parse_zone_spec("stream:a:2m").unwrap(),
        ];
        assert_eq!(resolve_zones(both_kinds).unwrap().len(), 3);
    }

    #[test]
    fn cli_reads_repeated_zones() {
        let cli = Cli::try_parse_from([
            "kv-backend",
            "--data-dir",
            "/tmp/x",
            "--zone",
            "one:1m:timeout=1s",
            "--zone",
            "stream:s:32k",
            "--no-group-commit",
        ])
        .unwrap();
        let config = Config::from_cli(cli).unwrap();
        assert_eq!(config.zones.len(), 3);
        assert!(!config.group_commit);
        assert_eq!(config.max_body, DEFAULT_MAX_BODY);
        assert_eq!(config.read_only_prefix.as_deref(), Some("/ro"));
    }

    #[test]
    fn read_only_prefix_is_a_clean_path_or_nothing() {
        assert_eq!(parse_read_only_prefix(""), Ok(None));
        assert_eq!(parse_read_only_prefix("/ro"), Ok(Some("/ro".into())));
        assert_eq!(
            parse_read_only_prefix("/api-ro/v1"),
            Ok(Some("/api-ro/v1".into()))
        );
        for bad in [
            "ro",
            "/ro/",
            "/",
            "//x",
            "/a b",
            "/api",
            "/replikv/x",
            "/..",
        ] {
            assert!(parse_read_only_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
