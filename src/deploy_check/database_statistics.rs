//! The statistics item of the checklist: whether PostgreSQL's autovacuum
//! keeps the tables' statistics current.

use secrecy::{ExposeSecret, SecretString};

use super::Finding;
use super::database_role::{connect, redact};
use crate::config::DatabaseTarget;

const STATISTICS_ITEM: &str = "PostgreSQL keeps table statistics current";

/// The fix for a server whose autovacuum cannot run.
const STATISTICS_FIX: &str = "set autovacuum = on and track_counts = on in postgresql.conf and reload PostgreSQL (see \"Database connections on PostgreSQL\" in docs/DEPLOYMENT.md)";

/// Checks that autovacuum runs on the PostgreSQL server in `DATABASE_URL`.
/// Without it, each pooled connection keeps the plans it made while the
/// tables were empty, and scans get slower as the tables grow. SQLite has
/// no autovacuum, so it passes with a note and nothing connects.
pub(super) async fn statistics_kept(database: &DatabaseTarget) -> Finding {
    match database {
        DatabaseTarget::Sqlite { .. } => {
            Finding::pass_with_note(STATISTICS_ITEM, "SQLite: there is no autovacuum to check")
        }
        DatabaseTarget::Postgres { url } => match read_settings(url).await {
            Ok(settings) => judge_settings(settings),
            Err(problem) => Finding::fail(
                STATISTICS_ITEM,
                format!("cannot read the server's settings: {problem}"),
                "check that PostgreSQL runs and that DATABASE_URL has the right host, port, role, password and database",
            ),
        },
    }
}

/// The server settings that autovacuum needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Settings {
    autovacuum: bool,
    /// Autovacuum works from the counts this setting collects.
    track_counts: bool,
}

fn judge_settings(settings: Settings) -> Finding {
    let off: Vec<&str> = [
        ("autovacuum", settings.autovacuum),
        ("track_counts", settings.track_counts),
    ]
    .into_iter()
    .filter_map(|(name, on)| (!on).then_some(name))
    .collect();
    if off.is_empty() {
        return Finding::pass(STATISTICS_ITEM);
    }
    Finding::fail(
        STATISTICS_ITEM,
        format!(
            "{} off, so the tables are never analysed and the service keeps query plans made for empty tables",
            if off.len() == 1 {
                format!("{} is", off[0])
            } else {
                format!("{} are", off.join(" and "))
            }
        ),
        STATISTICS_FIX,
    )
}

async fn read_settings(url: &SecretString) -> Result<Settings, String> {
    use sqlx::Connection;

    let mut connection = connect(url).await?;
    let read: Result<(bool, bool), sqlx::Error> = sqlx::query_as(
        "SELECT current_setting('autovacuum')::boolean, current_setting('track_counts')::boolean",
    )
    .fetch_one(&mut connection)
    .await;
    // The settings are already read, so a failed close changes nothing.
    let _ = connection.close().await;
    let (autovacuum, track_counts) =
        read.map_err(|error| redact(&error.to_string(), url.expose_secret()))?;
    Ok(Settings {
        autovacuum,
        track_counts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy_check::tests::assert_fails_with;

    #[tokio::test]
    async fn sqlite_statistics_pass_with_note() {
        let database = DatabaseTarget::Sqlite {
            path: "cyltrack.db".into(),
        };
        let finding = statistics_kept(&database).await;
        assert!(finding.passed(), "{finding}");
        assert!(finding.detail.unwrap_or_default().contains("SQLite"));
    }

    #[test]
    fn settings_judgement_names_what_is_off() {
        let on = judge_settings(Settings {
            autovacuum: true,
            track_counts: true,
        });
        assert!(on.passed(), "{on}");

        let cases = [
            (false, true, "autovacuum is off"),
            (true, false, "track_counts is off"),
            (false, false, "autovacuum and track_counts are off"),
        ];
        for (autovacuum, track_counts, problem) in cases {
            let finding = judge_settings(Settings {
                autovacuum,
                track_counts,
            });
            assert_fails_with(&finding, problem, "set autovacuum = on");
        }
    }

    #[tokio::test]
    async fn unreachable_server_hides_the_url() {
        // Nothing is expected to listen on loopback port 1, so the connection
        // is refused without leaving this machine.
        let url = "postgres://cyltrack_app:pa55-word-y@127.0.0.1:1/cyltrack";
        let database = DatabaseTarget::Postgres {
            url: SecretString::from(url),
        };
        let finding = statistics_kept(&database).await;
        assert_fails_with(
            &finding,
            "cannot read the server's settings",
            "DATABASE_URL",
        );
        let text = finding.to_string();
        assert!(!text.contains("pa55-word-y"), "password printed: {text}");
        assert!(!text.contains(url), "URL printed: {text}");
    }
}
