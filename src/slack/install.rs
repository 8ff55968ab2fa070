//! One-time install links: an OAuth install of the app starts only from a link an operator
//! made (`landfall slack install-link`), so nobody else can walk a browser through
//! `/slack/install` and leave their workspace's grant behind.
//!
//! The link's secret is never stored: the state file keeps its SHA-256 (the secret's name) and,
//! sealed with the data key like the bot grant, when it expires and whether it was used.
//! `rotate-key` re-seals these with everything else.

use landfall_engine::store::{Batch, Store};
use landfall_engine::DataKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::tokens::TokenError;

const PREFIX: &str = "slack.install-link.";

#[derive(Debug, Serialize, Deserialize)]
struct Ticket {
    /// Unix seconds.
    expires_at: i64,
    created_by: String,
    #[serde(default)]
    used_at: Option<i64>,
}

/// Why a link does not start an install.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkRefusal {
    #[error("this install link is not one Landfall made")]
    Unknown,
    #[error("this install link expired")]
    Expired,
    #[error("this install link was already used")]
    Used,
    #[error("{0}")]
    Store(String),
}

fn name_of(link: &str) -> String {
    format!("{PREFIX}{}", hex::encode(Sha256::digest(link.as_bytes())))
}

/// Makes a link valid for `ttl_secs` from `now`; returns its secret (the `link` query value).
pub fn create(
    store: &dyn Store,
    key: &DataKey,
    created_by: &str,
    ttl_secs: i64,
    now: i64,
) -> Result<String, TokenError> {
    let link: String = {
        use rand::Rng;
        let bytes: [u8; 32] = rand::rng().random();
        hex::encode(bytes)
    };
    let ticket = Ticket {
        expires_at: now.saturating_add(ttl_secs),
        created_by: created_by.to_string(),
        used_at: None,
    };
    save(store, key, &name_of(&link), &ticket)?;
    Ok(link)
}

fn save(store: &dyn Store, key: &DataKey, name: &str, t: &Ticket) -> Result<(), TokenError> {
    let plain = serde_json::to_vec(t).map_err(|e| TokenError::Store(e.to_string()))?;
    store
        .commit(Batch {
            secrets: vec![(name.to_string(), key.seal(&plain, name.as_bytes()))],
            ..Batch::default()
        })
        .map_err(|e| TokenError::Store(e.to_string()))
}

/// Redemptions in this process take turns: reading a ticket and marking it used is one step.
static REDEEMING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Uses a link: valid once, before it expires, even when several browsers present it at the
/// same instant to one process or to several sharing a store. Returns who made it.
pub fn redeem(
    store: &dyn Store,
    key: &DataKey,
    link: &str,
    now: i64,
) -> Result<String, LinkRefusal> {
    if link.len() != 64 || !link.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(LinkRefusal::Unknown);
    }
    let name = name_of(link);
    let _turn = REDEEMING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let sealed = store
        .secret(&name)
        .map_err(|e| LinkRefusal::Store(e.to_string()))?
        .ok_or(LinkRefusal::Unknown)?;
    let plain = key
        .open(&sealed, name.as_bytes())
        .map_err(|_| LinkRefusal::Unknown)?;
    let mut t: Ticket = serde_json::from_slice(&plain).map_err(|_| LinkRefusal::Unknown)?;
    if t.used_at.is_some() {
        return Err(LinkRefusal::Used);
    }
    if now >= t.expires_at {
        return Err(LinkRefusal::Expired);
    }
    // Across processes (workers on one PostgreSQL), the store's record of first deliveries
    // decides who used it: exactly one insert of this key succeeds. Claimed before the ticket
    // is marked, so a crash in between leaves a used link, never a reusable one.
    let claim = format!("{name}.used");
    if store
        .first_delivery(&claim)
        .map_err(|e| LinkRefusal::Store(e.to_string()))?
        == Some(false)
    {
        return Err(LinkRefusal::Used);
    }
    t.used_at = Some(now);
    save(store, key, &name, &t).map_err(|e| LinkRefusal::Store(e.to_string()))?;
    Ok(t.created_by)
}

#[cfg(test)]
mod tests {
    use super::*;
    use landfall_engine::store::MemStore;

    fn key() -> DataKey {
        DataKey::from_hex(&"42".repeat(32)).unwrap()
    }

    #[test]
    fn a_link_starts_one_install_before_it_expires() {
        let store = MemStore::default();
        let link = create(&store, &key(), "cli:alice", 3600, 1000).unwrap();
        assert_eq!(redeem(&store, &key(), &link, 1001).unwrap(), "cli:alice");
        assert_eq!(redeem(&store, &key(), &link, 1002), Err(LinkRefusal::Used));
        let late = create(&store, &key(), "cli:alice", 60, 1000).unwrap();
        assert_eq!(
            redeem(&store, &key(), &late, 1060),
            Err(LinkRefusal::Expired)
        );
        let forged = "ab".repeat(32);
        assert_eq!(
            redeem(&store, &key(), &forged, 1001),
            Err(LinkRefusal::Unknown)
        );
        assert_eq!(
            redeem(&store, &key(), "../x", 1001),
            Err(LinkRefusal::Unknown)
        );
    }

    /// Many browsers presenting one link at once: one install starts.
    #[test]
    fn a_link_presented_at_once_by_many_starts_one_install() {
        let store = std::sync::Arc::new(MemStore::default());
        for round in 0..20 {
            let link = create(store.as_ref(), &key(), "cli:alice", 3600, 1000).unwrap();
            let gate = std::sync::Arc::new(std::sync::Barrier::new(8));
            let tries: Vec<_> = (0..8)
                .map(|_| {
                    let (store, gate, link) = (store.clone(), gate.clone(), link.clone());
                    std::thread::spawn(move || {
                        gate.wait();
                        redeem(store.as_ref(), &key(), &link, 1001)
                    })
                })
                .collect();
            let results: Vec<_> = tries.into_iter().map(|t| t.join().unwrap()).collect();
            let started = results.iter().filter(|r| r.is_ok()).count();
            assert_eq!(started, 1, "round {round}: {results:?}");
            assert!(results
                .iter()
                .all(|r| r.is_ok() || *r == Err(LinkRefusal::Used)));
        }
    }

    #[test]
    fn the_link_itself_is_not_in_the_store() {
        let store = MemStore::default();
        let link = create(&store, &key(), "cli:alice", 3600, 1000).unwrap();
        for (name, sealed) in store.secrets().unwrap() {
            assert!(!name.contains(&link));
            assert!(!String::from_utf8_lossy(&sealed).contains(&link));
        }
    }

    #[test]
    fn another_key_cannot_open_a_link() {
        let store = MemStore::default();
        let link = create(&store, &key(), "cli:alice", 3600, 1000).unwrap();
        let other = DataKey::from_hex(&"07".repeat(32)).unwrap();
        assert_eq!(
            redeem(&store, &other, &link, 1001),
            Err(LinkRefusal::Unknown)
        );
    }
}
