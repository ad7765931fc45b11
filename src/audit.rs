//! Operator tools for the audit tables: `cyltrack audit verify` checks every
//! cylinder's history chain and scans, and `cyltrack db grants` prints the
//! PostgreSQL privileges of a service role that cannot change those tables.

use std::collections::HashMap;

use uuid::Uuid;

use crate::domain::audit::{ChainBreak, ChainKey, StoredEntry, verify_chain};
use crate::storage::{ChainHead, ScanLink, Store, StoreError};

/// Cylinders read per `chain_heads` call.
pub const HEADS_PER_PAGE: i64 = 500;

/// Event type of the history entry that each scan of a known cylinder writes.
const SCANNED_EVENT: &str = "SCANNED";

/// A cylinder whose history failed the audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenCylinder {
    pub cylinder_id: Uuid,
    pub serial_number: String,
    /// The first problem found, in the order the checks run: the chain
    /// first, then the scans.
    pub problem: ChainBreak,
}

/// Result of [`verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditReport {
    pub cylinders_checked: u64,
    pub entries_checked: u64,
    pub scans_checked: u64,
    /// Broken cylinders in id order.
    pub broken: Vec<BrokenCylinder>,
}

impl AuditReport {
    pub fn is_intact(&self) -> bool {
        self.broken.is_empty()
    }
}

/// Checks the history chain of every cylinder against the chain head on its
/// row, and every scan against its SCANNED history entry. Tampering is
/// reported in the result; only a failed database read is an error.
///
/// NOTE: scans of unknown codes belong to no cylinder, so no chain covers
/// them; only the append-only triggers and grants protect them.
pub async fn verify(store: &dyn Store, key: &ChainKey) -> Result<AuditReport, StoreError> {
    verify_in_pages(store, key, HEADS_PER_PAGE).await
}

/// Runs [`verify`], reading `heads_per_page` cylinders (at least 1) per
/// `chain_heads` call.
pub async fn verify_in_pages(
    store: &dyn Store,
    key: &ChainKey,
    heads_per_page: i64,
) -> Result<AuditReport, StoreError> {
    let heads_per_page = heads_per_page.max(1);
    let mut report = AuditReport::default();
    let mut after = None;
    loop {
        let heads = store.chain_heads(after, heads_per_page).await?;
        for head in &heads {
            verify_cylinder(store, key, head, &mut report).await?;
        }
        // A short page is the last one.
        match heads.last() {
            Some(last) if heads.len() as i64 == heads_per_page => after = Some(last.id),
            _ => break,
        }
    }
    Ok(report)
}

async fn verify_cylinder(
    store: &dyn Store,
    key: &ChainKey,
    head: &ChainHead,
    report: &mut AuditReport,
) -> Result<(), StoreError> {
    let entries = store.chain_entries(head.id).await?;
    let scans = store.scan_links(head.id).await?;
    report.cylinders_checked += 1;
    report.entries_checked += entries.len() as u64;
    report.scans_checked += scans.len() as u64;

    // A scan check on a broken chain would only repeat the chain's problem,
    // so it runs on intact chains alone.
    let checked = verify_chain(key, &entries, head.history_count, &head.last_history_hash)
        .and_then(|()| check_scans(&entries, &scans));
    if let Err(problem) = checked {
        report.broken.push(BrokenCylinder {
            cylinder_id: head.id,
            serial_number: head.serial_number.clone(),
            problem,
        });
    }
    Ok(())
}

/// The scan fields that a SCANNED entry's `details` repeat.
#[derive(Debug, PartialEq)]
struct ScanDetails {
    result: Option<String>,
    is_suspicious: Option<bool>,
}

/// Checks that each scan has exactly one SCANNED entry with the same result
/// and suspicion, and that each SCANNED entry names one of the scans, which
/// catches a removed scan row. A SCANNED entry whose details name no
/// readable scan id is skipped, because the verified chain shows that the
/// service wrote it that way.
fn check_scans(entries: &[StoredEntry], scans: &[ScanLink]) -> Result<(), ChainBreak> {
    let mut recorded: HashMap<Uuid, Vec<ScanDetails>> = HashMap::new();
    for entry in entries
        .iter()
        .filter(|entry| entry.event_type == SCANNED_EVENT)
    {
        let Ok(details) = serde_json::from_str::<serde_json::Value>(&entry.details) else {
            continue;
        };
        let Some(scan_id) = details["scan_id"]
            .as_str()
            .and_then(|text| Uuid::parse_str(text).ok())
        else {
            continue;
        };
        recorded.entry(scan_id).or_default().push(ScanDetails {
            result: details["result"].as_str().map(str::to_string),
            is_suspicious: details["is_suspicious"].as_bool(),
        });
    }

    for scan in scans {
        let expected = ScanDetails {
            result: Some(scan.result.clone()),
            is_suspicious: Some(scan.is_suspicious),
        };
        let matches = match recorded.get(&scan.id).map(Vec::as_slice) {
            Some([only]) => *only == expected,
            _ => false,
        };
        if !matches {
            return Err(ChainBreak::ScanMismatch { scan_id: scan.id });
        }
    }

    let mut unmatched: Vec<Uuid> = recorded
        .keys()
        .filter(|scan_id| !scans.iter().any(|scan| scan.id == **scan_id))
        .copied()
        .collect();
    unmatched.sort();
    match unmatched.first() {
        Some(scan_id) => Err(ChainBreak::ScanMismatch { scan_id: *scan_id }),
        None => Ok(()),
    }
}

/// Maximum length of a PostgreSQL identifier in bytes (NAMEDATALEN - 1).
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// Tables the service reads and changes freely.
pub const ORDINARY_TABLES: [&str; 7] = [
    "users",
    "refresh_tokens",
    "depots",
    "cylinders",
    "revoked_codes",
    "scan_context",
    "security_events",
];

/// Tables the service may only read and append to.
pub const APPEND_ONLY_TABLES: [&str; 2] = ["cylinder_history", "cylinder_scans"];

/// The table in which sqlx records the applied migrations.
pub const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// Reason that a name is not a plain PostgreSQL identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    #[error("must not be empty")]
    Empty,
    #[error("is {0} bytes long, but PostgreSQL names are at most 63 bytes")]
    TooLong(usize),
    #[error("must start with a letter or an underscore, not a digit")]
    LeadingDigit,
    #[error("contains {0:?}; use only letters a-z and A-Z, digits and underscores")]
    InvalidCharacter(char),
    #[error("is reserved by PostgreSQL; choose another role name")]
    ReservedRole,
}

/// A plain PostgreSQL identifier: ASCII letters, digits and underscores,
/// not starting with a digit, at most 63 bytes. Such a name is safe to
/// write in SQL between double quotes, which keeps its case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identifier(String);

impl Identifier {
    pub fn parse(text: &str) -> Result<Self, IdentifierError> {
        let Some(first) = text.chars().next() else {
            return Err(IdentifierError::Empty);
        };
        if let Some(invalid) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
        {
            return Err(IdentifierError::InvalidCharacter(invalid));
        }
        if first.is_ascii_digit() {
            return Err(IdentifierError::LeadingDigit);
        }
        if text.len() > MAX_IDENTIFIER_BYTES {
            return Err(IdentifierError::TooLong(text.len()));
        }
        Ok(Self(text.to_string()))
    }

    /// Parses a role name. Besides the identifier rules it rejects `public`,
    /// which GRANT reads as every role even when quoted, `none`, and the
    /// `pg_` prefix that PostgreSQL keeps for its own roles.
    pub fn parse_role(text: &str) -> Result<Self, IdentifierError> {
        let name = Self::parse(text)?;
        let lower = text.to_ascii_lowercase();
        if lower == "public" || lower == "none" || lower.starts_with("pg_") {
            return Err(IdentifierError::ReservedRole);
        }
        Ok(name)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

impl std::fmt::Display for Identifier {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// Builds the SQL that gives `role` the privileges the service needs in
/// `schema` and no more: full use of the ordinary tables, only SELECT and
/// INSERT on the append-only tables, and SELECT on the migrations table.
/// Names are quoted, so they match the role and schema exactly, case
/// included.
pub fn grant_statements(role: &Identifier, schema: &Identifier) -> String {
    let role_name = role.quoted();
    let schema_name = schema.quoted();
    let tables = |names: &[&str]| {
        names
            .iter()
            .map(|name| format!("{schema_name}.\"{name}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ordinary = tables(&ORDINARY_TABLES);
    let append_only = tables(&APPEND_ONLY_TABLES);
    let migrations = tables(&[MIGRATIONS_TABLE]);

    format!(
        "-- Privileges of the cyltrack service role {role_name} in schema {schema_name}.\n\
         -- Apply them as the owner of the tables, after `cyltrack migrate`.\n\
         BEGIN;\n\
         GRANT USAGE ON SCHEMA {schema_name} TO {role_name};\n\
         GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE {ordinary} TO {role_name};\n\
         -- The audit tables are append-only: the service reads and adds rows but never changes or removes them.\n\
         GRANT SELECT, INSERT ON TABLE {append_only} TO {role_name};\n\
         REVOKE UPDATE, DELETE, TRUNCATE ON TABLE {append_only} FROM {role_name};\n\
         GRANT SELECT ON TABLE {migrations} TO {role_name};\n\
         COMMIT;\n"
    )
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;

    fn name(text: &str) -> Identifier {
        Identifier::parse(text).unwrap()
    }

    #[test]
    fn identifier_accepts_plain_names() {
        for text in ["cyltrack_app", "_x", "A1", "CyltrackApp", &"a".repeat(63)] {
            assert_eq!(
                Identifier::parse(text).map(|name| name.to_string()),
                Ok(text.to_string()),
                "{text}"
            );
        }
    }

    #[test]
    fn identifier_rejects_unsafe_names() {
        let cases = [
            ("", IdentifierError::Empty),
            ("1app", IdentifierError::LeadingDigit),
            ("app-role", IdentifierError::InvalidCharacter('-')),
            ("app role", IdentifierError::InvalidCharacter(' ')),
            ("app\"; DROP", IdentifierError::InvalidCharacter('"')),
            ("caf\u{e9}", IdentifierError::InvalidCharacter('\u{e9}')),
            ("app;", IdentifierError::InvalidCharacter(';')),
            (&"a".repeat(64), IdentifierError::TooLong(64)),
        ];
        for (text, expected) in cases {
            assert_eq!(Identifier::parse(text), Err(expected), "{text:?}");
        }
    }

    #[test]
    fn role_rejects_reserved_names() {
        for text in ["public", "PUBLIC", "none", "pg_monitor", "PG_x"] {
            assert_eq!(
                Identifier::parse_role(text),
                Err(IdentifierError::ReservedRole),
                "{text}"
            );
        }
        assert!(Identifier::parse_role("publican").is_ok(), "publican");
    }

    #[test]
    fn grants_cover_every_table() {
        let sql = grant_statements(&name("cyltrack_app"), &name("public"));
        assert!(
            sql.contains("GRANT USAGE ON SCHEMA \"public\" TO \"cyltrack_app\";"),
            "schema usage: {sql}"
        );
        for table in ORDINARY_TABLES {
            let line = sql
                .lines()
                .find(|line| line.contains(&format!("\"public\".\"{table}\"")))
                .unwrap_or_default();
            assert!(
                line.starts_with("GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE"),
                "{table}: {line}"
            );
        }
        assert!(
            sql.contains(
                "GRANT SELECT ON TABLE \"public\".\"_sqlx_migrations\" TO \"cyltrack_app\";"
            ),
            "migrations table: {sql}"
        );
    }

    #[test]
    fn grants_keep_audit_tables_append_only() {
        let sql = grant_statements(&name("svc"), &name("cyltrack"));
        let audit = "\"cyltrack\".\"cylinder_history\", \"cyltrack\".\"cylinder_scans\"";
        assert!(
            sql.contains(&format!(
                "GRANT SELECT, INSERT ON TABLE {audit} TO \"svc\";"
            )),
            "grant: {sql}"
        );
        assert!(
            sql.contains(&format!(
                "REVOKE UPDATE, DELETE, TRUNCATE ON TABLE {audit} FROM \"svc\";"
            )),
            "revoke: {sql}"
        );
        for line in sql.lines().filter(|line| line.contains("UPDATE")) {
            assert!(
                !line.starts_with("GRANT") || !line.contains("cylinder_history"),
                "history update granted: {line}"
            );
        }
    }

    #[test]
    fn grants_run_in_one_transaction() {
        let sql = grant_statements(&name("svc"), &name("public"));
        let statements: Vec<&str> = sql.lines().filter(|line| !line.starts_with("--")).collect();
        assert_eq!(statements.first(), Some(&"BEGIN;"), "first: {sql}");
        assert_eq!(statements.last(), Some(&"COMMIT;"), "last: {sql}");
        assert!(
            statements.iter().all(|line| line.ends_with(';')),
            "one statement a line: {sql}"
        );
    }

    fn scanned(scan_id: Uuid, result: &str, is_suspicious: bool) -> StoredEntry {
        StoredEntry {
            cylinder_id: Uuid::from_u128(1),
            sequence: 1,
            event_type: SCANNED_EVENT.into(),
            actor_id: None,
            actor_role: None,
            from_status: None,
            to_status: None,
            notes: String::new(),
            details: serde_json::json!({
                "scan_id": scan_id,
                "scan_type": "QR",
                "result": result,
                "is_suspicious": is_suspicious,
                "scanned_at": "2026-01-02T03:04:05Z",
            })
            .to_string(),
            created_at: DateTime::<Utc>::default(),
            prev_hash: String::new(),
            entry_hash: String::new(),
        }
    }

    fn link(id: Uuid, result: &str, is_suspicious: bool) -> ScanLink {
        ScanLink {
            id,
            result: result.into(),
            is_suspicious,
        }
    }

    #[test]
    fn scans_match_their_entries() {
        let (first, second) = (Uuid::from_u128(10), Uuid::from_u128(11));
        let entries = [
            scanned(first, "VALID", false),
            scanned(second, "TAMPERED", true),
        ];
        let scans = [link(first, "VALID", false), link(second, "TAMPERED", true)];
        assert_eq!(check_scans(&entries, &scans), Ok(()));
        assert_eq!(check_scans(&[], &[]), Ok(()));
    }

    #[test]
    fn changed_scan_is_a_mismatch() {
        let id = Uuid::from_u128(10);
        let entries = [scanned(id, "VALID", false)];
        let mismatch = Err(ChainBreak::ScanMismatch { scan_id: id });
        assert_eq!(
            check_scans(&entries, &[link(id, "FAILED", false)]),
            mismatch,
            "result"
        );
        assert_eq!(
            check_scans(&entries, &[link(id, "VALID", true)]),
            mismatch,
            "suspicion"
        );
    }

    #[test]
    fn unrecorded_or_removed_scan_is_a_mismatch() {
        let (first, second) = (Uuid::from_u128(10), Uuid::from_u128(11));
        let entries = [scanned(first, "VALID", false)];
        assert_eq!(
            check_scans(
                &entries,
                &[link(first, "VALID", false), link(second, "VALID", false)]
            ),
            Err(ChainBreak::ScanMismatch { scan_id: second }),
            "scan without entry"
        );
        assert_eq!(
            check_scans(&entries, &[]),
            Err(ChainBreak::ScanMismatch { scan_id: first }),
            "entry without scan"
        );
        let twice = [
            scanned(first, "VALID", false),
            scanned(first, "VALID", false),
        ];
        assert_eq!(
            check_scans(&twice, &[link(first, "VALID", false)]),
            Err(ChainBreak::ScanMismatch { scan_id: first }),
            "two entries for one scan"
        );
    }
}
