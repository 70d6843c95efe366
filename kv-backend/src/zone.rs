//! Zones: their identity and configuration, their entries, key validation per
//! zone type, size accounting, and the effects that change them.
//!
//! Size accounting: an entry costs `key bytes + value bytes + ENTRY_OVERHEAD`,
//! and a write that would take a zone's sum over its configured size is refused
//! with 507 `KeyvalZoneFull` (NGINX does not document this case).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::error::{format, Error, Result};

/// Fixed bytes charged per entry on top of its key and value, standing for the
/// index and bookkeeping an entry costs (NGINX charges its rbtree node similarly).
pub const ENTRY_OVERHEAD: u64 = 64;

/// The two zone namespaces of the NGINX API: `/http/keyvals/` and `/stream/keyvals/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZoneKind {
    /// `keyval_zone` in the `http` context: `/api/{v}/http/keyvals/`.
    Http,
    /// `keyval_zone` in the `stream` context: `/api/{v}/stream/keyvals/`.
    Stream,
}

impl ZoneKind {
    /// The path segment of this namespace.
    pub fn as_str(self) -> &'static str {
        match self {
            ZoneKind::Http => "http",
            ZoneKind::Stream => "stream",
        }
    }
}

/// A zone's identity: its namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ZoneId {
    /// The namespace the zone lives in.
    pub kind: ZoneKind,
    /// The zone's name as configured.
    pub name: String,
}

impl ZoneId {
    /// An http zone.
    pub fn http(name: &str) -> ZoneId {
        ZoneId {
            kind: ZoneKind::Http,
            name: name.to_owned(),
        }
    }

    /// A stream zone.
    pub fn stream(name: &str) -> ZoneId {
        ZoneId {
            kind: ZoneKind::Stream,
            name: name.to_owned(),
        }
    }

    /// The key prefix of this zone's rows in the store: `http/NAME` or `stream/NAME`.
    pub fn storage_key(&self) -> String {
        format!("{}/{}", self.kind.as_str(), self.name)
    }

    /// The inverse of `Display`: `stream:NAME` is a stream zone, anything else an http zone.
    pub fn from_display(text: &str) -> ZoneId {
        match text.strip_prefix("stream:") {
            Some(name) => ZoneId::stream(name),
            None => ZoneId::http(text),
        }
    }

    /// The inverse of [`ZoneId::storage_key`].
    pub fn from_storage_key(text: &str) -> Option<ZoneId> {
        let (kind, name) = text.split_once('/')?;
        let kind = match kind {
            "http" => ZoneKind::Http,
            "stream" => ZoneKind::Stream,
            _ => return None,
        };
        Some(ZoneId {
            kind,
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for ZoneId {
    /// `NAME` for http zones and `stream:NAME` for stream zones, as in `--zone`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ZoneKind::Http => f.write_str(&self.name),
            ZoneKind::Stream => write!(f, "stream:{}", self.name),
        }
    }
}

/// How keys of a zone are interpreted (`keyval_zone ... type=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyType {
    /// Exact, case-sensitive match (the default).
    String,
    /// Keys are IPv4/IPv6 addresses or CIDR networks.
    Ip,
    /// A key matches lookups it is a prefix of.
    Prefix,
}

/// A configured zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneConfig {
    /// Namespace and name.
    pub id: ZoneId,
    /// Size limit in bytes, see [`entry_cost`].
    pub size: u64,
    /// `timeout=`: lifetime of entries written without `expire`; also enables `expire`.
    pub timeout_ms: Option<u64>,
    /// `type=`.
    pub key_type: KeyType,
}

impl ZoneConfig {
    /// The expiry instant of a value written at `applied_at`: `expire` if given,
    /// else the zone's timeout, else never.
    pub fn expiry(&self, expire_ms: Option<u64>, applied_at: u64) -> Option<u64> {
        expire_ms
            .or(self.timeout_ms)
            .map(|ms| applied_at.saturating_add(ms))
    }
}

/// What one entry costs against its zone's size.
pub fn entry_cost(key: &str, value: &str) -> u64 {
    key.len() as u64 + value.len() as u64 + ENTRY_OVERHEAD
}

/// Checks that `key` may be stored in a zone of type `key_type`.
pub fn validate_key(key: &str, key_type: KeyType) -> Result<()> {
    if key.is_empty() {
        return Err(Error::Format(format::KEY_REQUIRED));
    }
    if key.contains('\0') {
        return Err(Error::Format(format::INVALID_KEY));
    }
    if key_type == KeyType::Ip && !is_ip_or_cidr(key) {
        return Err(Error::Format(format::INVALID_KEY));
    }
    Ok(())
}

/// `1.2.3.4`, `::1`, `10.0.0.0/8` or `2001:db8::/32`.
fn is_ip_or_cidr(key: &str) -> bool {
    let (addr, prefix) = match key.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (key, None),
    };
    let Ok(addr) = addr.parse::<IpAddr>() else {
        return false;
    };
    match prefix {
        None => true,
        Some(prefix) => {
            let max = if addr.is_ipv4() { 32 } else { 128 };
            !prefix.is_empty()
                && prefix.len() <= 3
                && prefix.bytes().all(|b| b.is_ascii_digit())
                && prefix.parse::<u32>().is_ok_and(|p| p <= max)
        }
    }
}

/// One stored value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The value, always a string (numbers and booleans keep their JSON text).
    pub value: String,
    /// Unix ms at which the entry disappears; `None` lives forever.
    pub expires_at: Option<u64>,
}

impl Entry {
    /// Whether the entry is visible at `now_ms`: hidden from its expiry instant on.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.expires_at.is_none_or(|at| at > now_ms)
    }
}

/// A change to one zone. Writes are planned into effects, which are stored,
/// logged for replication and applied the same way everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Effect {
    /// Store `key` (replacing any entry).
    Put {
        key: String,
        value: String,
        expires_at: Option<u64>,
    },
    /// Remove `key` if present.
    Remove { key: String },
    /// Remove every entry.
    Clear,
}

/// The entries of one zone and the bytes they use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Zone {
    entries: BTreeMap<String, Entry>,
    used: u64,
}

impl Zone {
    /// The entry for `key` if it is live at `now_ms`.
    pub fn get_live(&self, key: &str, now_ms: u64) -> Option<&Entry> {
        self.entries.get(key).filter(|e| e.is_live(now_ms))
    }

    /// The live entries at `now_ms`, in key order.
    pub fn live(&self, now_ms: u64) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries.iter().filter(move |(_, e)| e.is_live(now_ms))
    }

    /// Whether no entry is live at `now_ms`.
    pub fn is_empty_at(&self, now_ms: u64) -> bool {
        self.live(now_ms).next().is_none()
    }

    /// Every stored entry, expired ones included.
    pub fn entries(&self) -> &BTreeMap<String, Entry> {
        &self.entries
    }

    /// Bytes used, expired-but-not-purged entries included.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Keys of entries expired at `now_ms`.
    pub fn expired_keys(&self, now_ms: u64) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(_, e)| !e.is_live(now_ms))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Stores an entry, keeping the size accounting.
    pub fn insert(&mut self, key: String, entry: Entry) {
        let cost = entry_cost(&key, &entry.value);
        if let Some(old) = self.entries.insert(key.clone(), entry) {
            self.used = self.used.saturating_sub(entry_cost(&key, &old.value));
        }
        self.used = self.used.saturating_add(cost);
    }

    /// Removes an entry, keeping the size accounting.
    pub fn remove(&mut self, key: &str) -> Option<Entry> {
        let old = self.entries.remove(key)?;
        self.used = self.used.saturating_sub(entry_cost(key, &old.value));
        Some(old)
    }

    /// Applies effects in order.
    pub fn apply(&mut self, effects: &[Effect]) {
        for effect in effects {
            match effect {
                Effect::Put {
                    key,
                    value,
                    expires_at,
                } => self.insert(
                    key.clone(),
                    Entry {
                        value: value.clone(),
                        expires_at: *expires_at,
                    },
                ),
                Effect::Remove { key } => {
                    self.remove(key);
                }
                Effect::Clear => {
                    self.entries.clear();
                    self.used = 0;
                }
            }
        }
    }

    /// The bytes the zone would use after `effects`, without applying them.
    pub fn used_after(&self, effects: &[Effect]) -> u64 {
        let mut used = self.used;
        let mut touched: BTreeMap<&str, Option<u64>> = BTreeMap::new();
        for effect in effects {
            let current = |key: &str, touched: &BTreeMap<&str, Option<u64>>| {
                touched
                    .get(key)
                    .copied()
                    .unwrap_or_else(|| self.entries.get(key).map(|e| entry_cost(key, &e.value)))
                    .unwrap_or(0)
            };
            match effect {
                Effect::Put { key, value, .. } => {
                    let cost = entry_cost(key, value);
                    used = used
                        .saturating_sub(current(key, &touched))
                        .saturating_add(cost);
                    touched.insert(key, Some(cost));
                }
                Effect::Remove { key } => {
                    used = used.saturating_sub(current(key, &touched));
                    touched.insert(key, None);
                }
                Effect::Clear => {
                    used = 0;
                    for key in self.entries.keys() {
                        touched.insert(key, None);
                    }
                    for cost in touched.values_mut() {
                        *cost = None;
                    }
                }
            }
        }
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Effect {
        Effect::Put {
            key: key.into(),
            value: value.into(),
            expires_at: None,
        }
    }

    #[test]
    fn an_entry_is_hidden_from_its_expiry_instant_on_exactly() {
        let entry = Entry {
            value: "v".into(),
            expires_at: Some(1_000),
        };
        assert!(entry.is_live(999));
        assert!(!entry.is_live(1_000));
        assert!(!entry.is_live(1_001));
    }

    #[test]
    fn ip_zones_take_addresses_and_networks_only() {
        for good in ["1.2.3.4", "1.2.3.0/24", "::1", "2001:db8::/32", "0.0.0.0/0"] {
            assert_eq!(validate_key(good, KeyType::Ip), Ok(()), "{good}");
        }
        for bad in [
            "not-an-ip",
            "1.2.3.4/33",
            "::1/129",
            "1.2.3.4/",
            "1.2.3/24",
            "1.2.3.4/+1",
            " 1.2.3.4",
        ] {
            assert_eq!(
                validate_key(bad, KeyType::Ip),
                Err(Error::Format(format::INVALID_KEY)),
                "{bad}"
            );
        }
        assert_eq!(validate_key("not-an-ip", KeyType::String), Ok(()));
    }

    #[test]
    fn empty_and_nul_keys_are_refused_in_every_zone_type() {
        for key_type in [KeyType::String, KeyType::Ip, KeyType::Prefix] {
            assert_eq!(
                validate_key("", key_type),
                Err(Error::Format(format::KEY_REQUIRED))
            );
            assert_eq!(
                validate_key("a\0b", key_type),
                Err(Error::Format(format::INVALID_KEY))
            );
        }
    }

    #[test]
    fn size_accounting_follows_inserts_replacements_and_removals() {
        let mut zone = Zone::default();
        zone.apply(&[put("ab", "xyz")]);
        assert_eq!(zone.used(), 5 + ENTRY_OVERHEAD);
        assert_eq!(zone.used_after(&[put("ab", "x")]), 3 + ENTRY_OVERHEAD);
        zone.apply(&[put("ab", "x")]);
        assert_eq!(zone.used(), 3 + ENTRY_OVERHEAD);
        let effects = [put("c", "d"), Effect::Remove { key: "ab".into() }];
        assert_eq!(zone.used_after(&effects), 2 + ENTRY_OVERHEAD);
        zone.apply(&effects);
        assert_eq!(zone.used(), 2 + ENTRY_OVERHEAD);
        assert_eq!(
            zone.used_after(&[Effect::Clear, put("e", "f")]),
            2 + ENTRY_OVERHEAD
        );
        zone.apply(&[Effect::Clear]);
        assert_eq!(zone.used(), 0);
    }

    #[test]
    fn storage_keys_round_trip() {
        for id in [ZoneId::http("default"), ZoneId::stream("s")] {
            assert_eq!(ZoneId::from_storage_key(&id.storage_key()), Some(id));
        }
        assert_eq!(ZoneId::from_storage_key("tcp/x"), None);
    }
}
