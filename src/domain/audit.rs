//! The tamper-evident history chain. Each entry's hash is an HMAC-SHA-256,
//! keyed by a key derived from `SECRET_KEY`, over the entry's content and
//! the previous entry's hash. A chain runs per cylinder, so that scans of
//! different cylinders never wait on one global lock. Without the key,
//! someone who edits rows in the database cannot recompute valid hashes.

use chrono::{DateTime, SecondsFormat, Utc};
use hmac::Mac;
use uuid::Uuid;

use super::codes::keyed_mac;

/// Key of the history chain's HMAC.
#[derive(Clone)]
pub struct ChainKey(Vec<u8>);

impl ChainKey {
    /// Derives the chain key from the server's `SECRET_KEY`, so that the
    /// chain key differs from the keys of the other HMACs that use it.
    pub fn derive(server_secret: &[u8]) -> Self {
        let mut mac = keyed_mac(server_secret);
        mac.update(b"cyltrack history chain v1");
        Self(mac.finalize().into_bytes().to_vec())
    }
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("ChainKey([redacted])")
    }
}

/// The hashed fields of one history entry.
#[derive(Debug, Clone, Copy)]
pub struct ChainedEntry<'a> {
    pub cylinder_id: Uuid,
    pub sequence: i64,
    pub event_type: &'a str,
    pub actor_id: Option<Uuid>,
    pub actor_role: Option<&'a str>,
    pub from_status: Option<&'a str>,
    pub to_status: Option<&'a str>,
    pub notes: &'a str,
    /// Canonical JSON text, as stored.
    pub details: &'a str,
    /// Stored with microsecond precision, which both databases keep.
    pub created_at: DateTime<Utc>,
    pub prev_hash: &'a str,
}

/// Computes the hash of `entry`, in lower-case hex. Every field is
/// length-prefixed and absent values have their own marker, so that no two
/// different entries produce the same message.
pub fn entry_hash(key: &ChainKey, entry: &ChainedEntry<'_>) -> String {
    let mut mac = keyed_mac(&key.0);
    let cylinder = entry.cylinder_id.to_string();
    let sequence = entry.sequence.to_string();
    let actor = entry.actor_id.map(|id| id.to_string());
    let created_at = entry
        .created_at
        .to_rfc3339_opts(SecondsFormat::Micros, true);
    let fields: [Option<&str>; 11] = [
        Some(&cylinder),
        Some(&sequence),
        Some(entry.event_type),
        actor.as_deref(),
        entry.actor_role,
        entry.from_status,
        entry.to_status,
        Some(entry.notes),
        Some(entry.details),
        Some(&created_at),
        Some(entry.prev_hash),
    ];
    for field in fields {
        match field {
            None => mac.update(&u64::MAX.to_be_bytes()),
            Some(text) => {
                mac.update(&(text.len() as u64).to_be_bytes());
                mac.update(text.as_bytes());
            }
        }
    }
    hex::encode(mac.finalize().into_bytes())
}

/// The first problem found in a cylinder's chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    #[error("entry {position} was changed: its hash does not match its content")]
    Changed { position: i64 },
    #[error("entry {position} is missing: the entries jump from {previous} to {position}")]
    Missing { position: i64, previous: i64 },
    #[error(
        "entry {position} does not follow entry {previous}: an entry was removed or the entries were reordered"
    )]
    Unlinked { position: i64, previous: i64 },
    #[error(
        "the chain ends at entry {found} but the cylinder records {expected} entries: the last entries were removed"
    )]
    Truncated { found: i64, expected: i64 },
    #[error("the last entry's hash differs from the one the cylinder records")]
    HeadMismatch,
    #[error("scan {scan_id} was changed or has no matching history entry")]
    ScanMismatch { scan_id: Uuid },
}

/// One stored history entry with its hashes, as the verifier reads it.
#[derive(Debug, Clone)]
pub struct StoredEntry {
    pub cylinder_id: Uuid,
    pub sequence: i64,
    pub event_type: String,
    pub actor_id: Option<Uuid>,
    pub actor_role: Option<String>,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    pub notes: String,
    pub details: String,
    pub created_at: DateTime<Utc>,
    pub prev_hash: String,
    pub entry_hash: String,
}

impl StoredEntry {
    fn chained(&self) -> ChainedEntry<'_> {
        ChainedEntry {
            cylinder_id: self.cylinder_id,
            sequence: self.sequence,
            event_type: &self.event_type,
            actor_id: self.actor_id,
            actor_role: self.actor_role.as_deref(),
            from_status: self.from_status.as_deref(),
            to_status: self.to_status.as_deref(),
            notes: &self.notes,
            details: &self.details,
            created_at: self.created_at,
            prev_hash: &self.prev_hash,
        }
    }
}

/// Checks one cylinder's entries, ordered by sequence, against the chain
/// head that the cylinder row records.
pub fn verify_chain(
    key: &ChainKey,
    entries: &[StoredEntry],
    recorded_count: i64,
    recorded_head: &str,
) -> Result<(), ChainBreak> {
    let mut previous_sequence = 0;
    let mut previous_hash = "";
    for entry in entries {
        if entry.sequence != previous_sequence + 1 {
            return Err(ChainBreak::Missing {
                position: entry.sequence,
                previous: previous_sequence,
            });
        }
        if entry_hash(key, &entry.chained()) != entry.entry_hash {
            return Err(ChainBreak::Changed {
                position: entry.sequence,
            });
        }
        if entry.prev_hash != previous_hash {
            return Err(ChainBreak::Unlinked {
                position: entry.sequence,
                previous: previous_sequence,
            });
        }
        previous_sequence = entry.sequence;
        previous_hash = &entry.entry_hash;
    }
    if previous_sequence != recorded_count {
        return Err(ChainBreak::Truncated {
            found: previous_sequence,
            expected: recorded_count,
        });
    }
    if previous_hash != recorded_head {
        return Err(ChainBreak::HeadMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(key: &ChainKey, length: i64) -> Vec<StoredEntry> {
        let cylinder_id = Uuid::from_u128(7);
        let mut entries: Vec<StoredEntry> = Vec::new();
        for sequence in 1..=length {
            let prev_hash = entries
                .last()
                .map(|entry| entry.entry_hash.clone())
                .unwrap_or_default();
            let mut entry = StoredEntry {
                cylinder_id,
                sequence,
                event_type: "STATUS_CHANGED".into(),
                actor_id: Some(Uuid::from_u128(1)),
                actor_role: Some("DISPATCHER".into()),
                from_status: Some("IN_STOCK".into()),
                to_status: Some("FILLED".into()),
                notes: format!("entry {sequence}"),
                details: "{}".into(),
                created_at: DateTime::from_timestamp(1_796_000_000 + sequence, 123_456_000)
                    .unwrap_or_default(),
                prev_hash,
                entry_hash: String::new(),
            };
            entry.entry_hash = entry_hash(key, &entry.chained());
            entries.push(entry);
        }
        entries
    }

    fn head(entries: &[StoredEntry]) -> (i64, String) {
        (
            entries.len() as i64,
            entries
                .last()
                .map(|entry| entry.entry_hash.clone())
                .unwrap_or_default(),
        )
    }

    #[test]
    fn intact_chain_verifies() {
        let key = ChainKey::derive(b"server secret");
        let entries = chain(&key, 5);
        let (count, last) = head(&entries);
        assert_eq!(verify_chain(&key, &entries, count, &last), Ok(()));
        assert_eq!(verify_chain(&key, &[], 0, ""), Ok(()));
    }

    #[test]
    fn changed_entry_is_found() {
        let key = ChainKey::derive(b"server secret");
        let mut entries = chain(&key, 5);
        let (count, last) = head(&entries);
        entries[2].notes = "edited".into();
        assert_eq!(
            verify_chain(&key, &entries, count, &last),
            Err(ChainBreak::Changed { position: 3 })
        );
    }

    #[test]
    fn removed_entry_is_found() {
        let key = ChainKey::derive(b"server secret");
        let mut entries = chain(&key, 5);
        let (count, last) = head(&entries);
        entries.remove(1);
        assert_eq!(
            verify_chain(&key, &entries, count, &last),
            Err(ChainBreak::Missing {
                position: 3,
                previous: 1
            })
        );

        let mut tail_cut = chain(&key, 5);
        tail_cut.pop();
        assert_eq!(
            verify_chain(&key, &tail_cut, count, &last),
            Err(ChainBreak::Truncated {
                found: 4,
                expected: 5
            })
        );
    }

    #[test]
    fn reordered_entries_are_found() {
        let key = ChainKey::derive(b"server secret");
        let mut entries = chain(&key, 5);
        let (count, last) = head(&entries);
        // Swap the content of entries 2 and 3 but keep their positions, as
        // someone renumbering rows would.
        let (second, third) = (entries[1].clone(), entries[2].clone());
        entries[1] = StoredEntry {
            sequence: 2,
            ..third
        };
        entries[2] = StoredEntry {
            sequence: 3,
            ..second
        };
        assert!(verify_chain(&key, &entries, count, &last).is_err());
    }

    #[test]
    fn rehash_without_key_is_found() {
        let key = ChainKey::derive(b"server secret");
        let forger = ChainKey::derive(b"guessed secret");
        let mut entries = chain(&key, 3);
        entries[2].notes = "edited".into();
        entries[2].entry_hash = entry_hash(&forger, &entries[2].chained());
        let last = entries[2].entry_hash.clone();
        assert_eq!(
            verify_chain(&key, &entries, 3, &last),
            Err(ChainBreak::Changed { position: 3 })
        );
    }
}
