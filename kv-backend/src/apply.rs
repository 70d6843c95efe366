//! Write operations and the pure rules that turn one into effects on a zone:
//! NGINX's rules for client writes (no overwrite on POST, no upsert on PATCH,
//! one pair per call unless the zone is empty, size limits), and plain effects
//! for verified shadow writes, which are applied without re-validation.

use crate::error::{format, Error, Result};
use crate::request::ValueSpec;
use crate::zone::{validate_key, Effect, ZoneConfig};
use crate::zone::{Zone, ZoneId};

/// What a write asks for, decoded from its method and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteKind {
    /// POST: add new pairs.
    Post(Vec<(String, ValueSpec)>),
    /// PATCH: change or (with `None`) delete existing pairs.
    Patch(Vec<(String, Option<ValueSpec>)>),
    /// DELETE: empty the zone.
    Clear,
}

/// Who sent a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A client: validated, gets the next seq of this node's history.
    Client,
    /// A verified shadow write from the primary (see `replication.rs`).
    Shadow(crate::replication::ShadowMeta),
}

/// One write queued for the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// A write to a zone.
    Zone {
        zone: ZoneId,
        kind: WriteKind,
        origin: Origin,
    },
    /// Catch-up: apply the log entries after this node's applied seq, in order.
    Replay(crate::replication::LogBatch),
    /// Catch-up: replace all data, the history and the applied seq.
    Restore(crate::replication::Snapshot),
    /// Housekeeping: remove entries expired at the moment the writer runs it.
    /// Not a replicated write: it gets no seq, since every node computes the
    /// same expiry instants.
    Purge,
}

/// Validates a client write against the zone as the writer sees it (committed
/// state plus earlier writes of the same batch) at `applied_at`, and plans its effects.
pub fn plan_client(
    config: &ZoneConfig,
    zone: &Zone,
    kind: &WriteKind,
    applied_at: u64,
) -> Result<Vec<Effect>> {
    let effects = match kind {
        WriteKind::Post(pairs) => {
            for (key, spec) in pairs {
                validate_key(key, config.key_type)?;
                check_expire(config, spec)?;
            }
            if pairs.len() > 1 && !zone.is_empty_at(applied_at) {
                return Err(Error::Format(format::ONLY_ONE_ADDED));
            }
            if let Some((key, _)) = pairs
                .iter()
                .find(|(key, _)| zone.get_live(key, applied_at).is_some())
            {
                return Err(Error::KeyExists(key.clone()));
            }
            pairs
                .iter()
                .map(|(key, spec)| put(config, key, spec, applied_at))
                .collect()
        }
        WriteKind::Patch(pairs) => {
            let [(key, spec)] = pairs.as_slice() else {
                return Err(if pairs.is_empty() {
                    Error::Format(format::KEY_REQUIRED)
                } else {
                    Error::Format(format::ONLY_ONE_UPDATED)
                });
            };
            validate_key(key, config.key_type)?;
            if let Some(spec) = spec {
                check_expire(config, spec)?;
            }
            if zone.get_live(key, applied_at).is_none() {
                return Err(Error::KeyNotFound(key.clone()));
            }
            match spec {
                Some(spec) => vec![put(config, key, spec, applied_at)],
                None => vec![Effect::Remove { key: key.clone() }],
            }
        }
        WriteKind::Clear => return Ok(vec![Effect::Clear]),
    };
    fit(config, zone, effects, applied_at)
}

/// Plans a verified shadow write: the same effects the primary computed, with
/// no existence, format or size checks (the primary made them).
pub fn plan_shadow(config: &ZoneConfig, kind: &WriteKind, applied_at: u64) -> Vec<Effect> {
    match kind {
        WriteKind::Post(pairs) => pairs
            .iter()
            .map(|(key, spec)| put(config, key, spec, applied_at))
            .collect(),
        WriteKind::Patch(pairs) => pairs
            .iter()
            .map(|(key, spec)| match spec {
                Some(spec) => put(config, key, spec, applied_at),
                None => Effect::Remove { key: key.clone() },
            })
            .collect(),
        WriteKind::Clear => vec![Effect::Clear],
    }
}

fn put(config: &ZoneConfig, key: &str, spec: &ValueSpec, applied_at: u64) -> Effect {
    Effect::Put {
        key: key.to_owned(),
        value: spec.value.clone(),
        expires_at: config.expiry(spec.expire_ms, applied_at),
    }
}

fn check_expire(config: &ZoneConfig, spec: &ValueSpec) -> Result<()> {
    if spec.expire_ms.is_some() && config.timeout_ms.is_none() {
        return Err(Error::Format(format::TIMEOUT_NOT_ENABLED));
    }
    Ok(())
}

/// Keeps the zone within its size. A write that grows the zone past its size is
/// refused, after counting the room that removing expired entries would free
/// (those removals then become part of the write).
fn fit(
    config: &ZoneConfig,
    zone: &Zone,
    effects: Vec<Effect>,
    applied_at: u64,
) -> Result<Vec<Effect>> {
    let after = zone.used_after(&effects);
    if after <= config.size || after <= zone.used() {
        return Ok(effects);
    }
    let mut with_purge: Vec<Effect> = zone
        .expired_keys(applied_at)
        .into_iter()
        .map(|key| Effect::Remove { key })
        .collect();
    if with_purge.is_empty() {
        return Err(Error::ZoneFull(config.id.to_string()));
    }
    with_purge.extend(effects);
    if zone.used_after(&with_purge) <= config.size {
        Ok(with_purge)
    } else {
        Err(Error::ZoneFull(config.id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zone::{KeyType, ENTRY_OVERHEAD};

    fn config(timeout_ms: Option<u64>) -> ZoneConfig {
        ZoneConfig {
            id: ZoneId::http("one"),
            size: 4 * ENTRY_OVERHEAD,
            timeout_ms,
            key_type: KeyType::String,
        }
    }

    fn post(pairs: &[(&str, &str)]) -> WriteKind {
        WriteKind::Post(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), ValueSpec::plain(*v)))
                .collect(),
        )
    }

    #[test]
    fn plain_values_expire_after_the_zone_timeout_from_applied_at() {
        let effects = plan_client(
            &config(Some(1_000)),
            &Zone::default(),
            &post(&[("a", "1")]),
            50,
        )
        .unwrap();
        assert_eq!(
            effects,
            [Effect::Put {
                key: "a".into(),
                value: "1".into(),
                expires_at: Some(1_050)
            }]
        );
    }

    #[test]
    fn expired_entries_do_not_block_a_post_of_the_same_key() {
        let mut zone = Zone::default();
        zone.apply(&[Effect::Put {
            key: "a".into(),
            value: "old".into(),
            expires_at: Some(100),
        }]);
        assert!(plan_client(&config(Some(10)), &zone, &post(&[("a", "1")]), 100).is_ok());
        assert_eq!(
            plan_client(&config(Some(10)), &zone, &post(&[("a", "1")]), 99),
            Err(Error::KeyExists("a".into()))
        );
    }

    #[test]
    fn a_full_zone_refuses_growth_but_reclaims_expired_entries_first() {
        let config = config(Some(10));
        let mut zone = Zone::default();
        for key in ["a", "b", "c"] {
            zone.apply(&[Effect::Put {
                key: key.into(),
                value: "x".into(),
                expires_at: Some(100),
            }]);
        }
        let big = "y".repeat(ENTRY_OVERHEAD as usize);
        let kind = post(&[("d", &big)]);
        assert_eq!(
            plan_client(&config, &zone, &kind, 50),
            Err(Error::ZoneFull("one".into()))
        );
        let effects = plan_client(&config, &zone, &kind, 100).unwrap();
        assert_eq!(effects.len(), 4);
        assert!(matches!(effects[0], Effect::Remove { .. }));
    }

    #[test]
    fn shadow_writes_become_effects_without_checks() {
        let config = config(None);
        let kind = WriteKind::Patch(vec![
            ("missing".into(), Some(ValueSpec::plain("1"))),
            ("gone".into(), None),
        ]);
        assert_eq!(
            plan_shadow(&config, &kind, 5),
            [
                Effect::Put {
                    key: "missing".into(),
                    value: "1".into(),
                    expires_at: None
                },
                Effect::Remove { key: "gone".into() }
            ]
        );
    }
}
