//! The database-role item of the checklist: whether the role in
//! `DATABASE_URL` could change or remove rows of the audit tables.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::Finding;
use crate::config::DatabaseTarget;

/// How long the database-role check waits for PostgreSQL to accept a
/// connection before it reports the database as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The tables that the service role may add rows to but never change.
const AUDIT_TABLES: [&str; 2] = ["cylinder_history", "cylinder_scans"];

const ROLE_ITEM: &str = "Database role cannot change the audit tables";

/// Checks the role in `DATABASE_URL` on PostgreSQL. SQLite has no roles, so
/// it passes with a note and nothing connects.
pub(super) async fn audit_tables_protected(database: &DatabaseTarget) -> Finding {
    match database {
        DatabaseTarget::Sqlite { .. } => Finding::pass_with_note(
            ROLE_ITEM,
            "SQLite: triggers reject UPDATE and DELETE on cylinder_history and cylinder_scans, and the database file's permissions are the only access control",
        ),
        DatabaseTarget::Postgres { url } => match read_role_privileges(url).await {
            Ok(privileges) => judge_role(&privileges),
            Err(error) => error.into_finding(),
        },
    }
}

/// The privileges of the connected PostgreSQL role on one audit table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TablePrivileges {
    table: &'static str,
    delete: bool,
    update: bool,
    truncate: bool,
    /// The role owns the table or is a member of its owner, and so can
    /// also disable the table's triggers.
    owner: bool,
}

impl TablePrivileges {
    fn held(&self) -> Vec<&'static str> {
        [
            ("UPDATE", self.update),
            ("DELETE", self.delete),
            ("TRUNCATE", self.truncate),
        ]
        .into_iter()
        .filter_map(|(name, held)| held.then_some(name))
        .collect()
    }
}

/// The privileges of the role in `DATABASE_URL` on the audit tables.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RolePrivileges {
    role: String,
    superuser: bool,
    tables: Vec<TablePrivileges>,
}

fn judge_role(privileges: &RolePrivileges) -> Finding {
    let held: Vec<String> = privileges
        .tables
        .iter()
        .filter(|table| !table.held().is_empty())
        .map(|table| format!("{} on {}", table.held().join(", "), table.table))
        .collect();
    if held.is_empty() {
        return Finding::pass_with_note(
            ROLE_ITEM,
            format!("role {} may only read and add rows", privileges.role),
        );
    }

    let reason = if privileges.superuser {
        "it is a superuser"
    } else if privileges.tables.iter().any(|table| table.owner) {
        "it owns the tables or is a member of their owner"
    } else {
        "these privileges were granted to it"
    };
    Finding::fail(
        ROLE_ITEM,
        format!(
            "role {} holds {}, because {reason}",
            privileges.role,
            held.join("; ")
        ),
        "create a restricted role, apply `cyltrack db grants --role NAME` to it as the owner, and set DATABASE_URL to that role for serve (see docs/DEPLOYMENT.md)",
    )
}

/// A failure to read the database role's privileges.
#[derive(Debug)]
enum RoleReadError {
    Unreachable(String),
    MissingTable(&'static str),
    Query(String),
}

impl RoleReadError {
    fn into_finding(self) -> Finding {
        match self {
            RoleReadError::Unreachable(problem) => Finding::fail(
                ROLE_ITEM,
                format!("cannot connect to the PostgreSQL database in DATABASE_URL: {problem}"),
                "check that PostgreSQL runs and that DATABASE_URL has the right host, port, role, password and database",
            ),
            RoleReadError::MissingTable(table) => Finding::fail(
                ROLE_ITEM,
                format!("table {table} does not exist in the database and schema of DATABASE_URL"),
                "run `cyltrack migrate` as the owner role, and check that DATABASE_URL names cyltrack's database",
            ),
            RoleReadError::Query(problem) => Finding::fail(
                ROLE_ITEM,
                format!("cannot read the role's privileges: {problem}"),
                "check that the role in DATABASE_URL may connect to cyltrack's database",
            ),
        }
    }
}

/// Connects to the PostgreSQL database in `url`. The error names the
/// problem without the URL or its password.
pub(super) async fn connect(url: &SecretString) -> Result<sqlx::PgConnection, String> {
    use sqlx::Connection;
    use std::str::FromStr;

    let url_text = url.expose_secret();
    let options = sqlx::postgres::PgConnectOptions::from_str(url_text)
        .map_err(|error| redact(&error.to_string(), url_text))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, sqlx::PgConnection::connect_with(&options)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(error)) => Err(redact(&error.to_string(), url_text)),
        Err(_) => Err(format!(
            "timed out after {} seconds",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

async fn read_role_privileges(url: &SecretString) -> Result<RolePrivileges, RoleReadError> {
    use sqlx::Connection;

    let url_text = url.expose_secret();
    let mut connection = connect(url).await.map_err(RoleReadError::Unreachable)?;

    let privileges = query_role_privileges(&mut connection)
        .await
        .map_err(|error| match error {
            RoleReadError::Query(problem) => RoleReadError::Query(redact(&problem, url_text)),
            other => other,
        });
    // The privileges are already read, so a failed close changes nothing.
    let _ = connection.close().await;
    privileges
}

async fn query_role_privileges(
    connection: &mut sqlx::PgConnection,
) -> Result<RolePrivileges, RoleReadError> {
    let query_error = |error: sqlx::Error| RoleReadError::Query(error.to_string());

    let (role, superuser): (String, bool) = sqlx::query_as(
        "SELECT current_user::text, COALESCE((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false)",
    )
    .fetch_one(&mut *connection)
    .await
    .map_err(query_error)?;

    let mut tables = Vec::new();
    for table in AUDIT_TABLES {
        // to_regclass resolves the name through the search path, as the
        // service's own queries do, and returns NULL for a missing table.
        let row: Option<(bool, bool, bool, bool)> = sqlx::query_as(
            "SELECT has_table_privilege(current_user, c.oid, 'DELETE'), \
                    has_table_privilege(current_user, c.oid, 'UPDATE'), \
                    has_table_privilege(current_user, c.oid, 'TRUNCATE'), \
                    pg_has_role(current_user, c.relowner, 'MEMBER') \
             FROM pg_class c WHERE c.oid = to_regclass($1)",
        )
        .bind(table)
        .fetch_optional(&mut *connection)
        .await
        .map_err(query_error)?;
        let Some((delete, update, truncate, owner)) = row else {
            return Err(RoleReadError::MissingTable(table));
        };
        tables.push(TablePrivileges {
            table,
            delete,
            update,
            truncate,
            owner,
        });
    }
    Ok(RolePrivileges {
        role,
        superuser,
        tables,
    })
}

/// Removes the database URL and its password from an error message.
pub(super) fn redact(message: &str, url: &str) -> String {
    let mut text = message.replace(url, "[DATABASE_URL]");
    if let Some(password) = url_password(url) {
        text = text.replace(password, "[password]");
    }
    text
}

/// Returns the password in the user information of `url`, if any.
fn url_password(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (user_info, _) = authority.rsplit_once('@')?;
    let (_, password) = user_info.split_once(':')?;
    (!password.is_empty()).then_some(password)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy_check::tests::assert_fails_with;

    #[tokio::test]
    async fn sqlite_role_passes_with_note() {
        let database = DatabaseTarget::Sqlite {
            path: "cyltrack.db".into(),
        };
        let finding = audit_tables_protected(&database).await;
        assert!(finding.passed(), "{finding}");
        assert!(finding.detail.unwrap_or_default().contains("triggers"));
    }

    fn privileges(superuser: bool, owner: bool, delete: bool) -> RolePrivileges {
        RolePrivileges {
            role: "cyltrack_app".into(),
            superuser,
            tables: AUDIT_TABLES
                .into_iter()
                .map(|table| TablePrivileges {
                    table,
                    delete,
                    update: owner || superuser,
                    truncate: owner || superuser,
                    owner,
                })
                .collect(),
        }
    }

    #[test]
    fn role_judgement_names_the_cause() {
        let restricted = judge_role(&privileges(false, false, false));
        assert!(restricted.passed(), "{restricted}");

        let cases = [
            (privileges(true, false, true), "superuser"),
            (privileges(false, true, true), "owns the tables"),
            (privileges(false, false, true), "were granted"),
        ];
        for (role, cause) in cases {
            let finding = judge_role(&role);
            assert_fails_with(&finding, cause, "cyltrack db grants --role NAME");
            let problem = finding.detail.as_deref().unwrap_or_default();
            assert!(problem.contains("DELETE"), "names DELETE: {finding}");
            assert!(
                problem.contains("cylinder_history"),
                "names the table: {finding}"
            );
        }
    }

    #[tokio::test]
    async fn unreachable_database_hides_the_url() {
        // Nothing is expected to listen on loopback port 1, so the connection
        // is refused without leaving this machine.
        let url = "postgres://cyltrack_app:pa55-word-x@127.0.0.1:1/cyltrack";
        let database = DatabaseTarget::Postgres {
            url: SecretString::from(url),
        };
        let finding = audit_tables_protected(&database).await;
        assert_fails_with(&finding, "cannot connect", "DATABASE_URL");
        let text = finding.to_string();
        assert!(!text.contains("pa55-word-x"), "password printed: {text}");
        assert!(!text.contains(url), "URL printed: {text}");
    }

    #[test]
    fn redact_removes_url_and_password() {
        let url = "postgres://app:hunter22@127.0.0.1/cyltrack";
        let text = redact(&format!("failed for {url} with hunter22"), url);
        assert_eq!(text, "failed for [DATABASE_URL] with [password]");
        assert_eq!(url_password("postgres://app@127.0.0.1/db"), None);
    }
}
