//! The production checklist behind `cyltrack check --deploy`. Each check
//! returns a [`Finding`]; the command line only prints them. The wording of
//! every item and every fix lives in this module and its submodule.
//!
//! No finding contains a secret, a password or a database URL.

mod database_role;
mod database_statistics;

use std::fmt;

use secrecy::ExposeSecret;

use crate::config::{self, Config, ConfigError, DatabaseTarget, LOOPBACK_HOSTS, Variables};

/// The shortest `SECURE_HSTS_SECONDS` that the checklist accepts: one year.
pub const MIN_HSTS_SECONDS: u64 = 31_536_000;

/// Whether an item of the checklist passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
}

/// The result of one item of the checklist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The requirement, such as "DEBUG is off".
    pub item: String,
    pub outcome: Outcome,
    /// The problem of a failed item, or an optional note on a passed one.
    pub detail: Option<String>,
    /// The variable to set, and its value, that makes a failed item pass.
    pub fix: Option<String>,
}

impl Finding {
    fn pass(item: impl Into<String>) -> Self {
        Self {
            item: item.into(),
            outcome: Outcome::Pass,
            detail: None,
            fix: None,
        }
    }

    fn pass_with_note(item: impl Into<String>, note: impl Into<String>) -> Self {
        Self {
            detail: Some(note.into()),
            ..Self::pass(item)
        }
    }

    fn fail(item: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            item: item.into(),
            outcome: Outcome::Fail,
            detail: Some(problem.into()),
            fix: Some(fix.into()),
        }
    }

    pub fn passed(&self) -> bool {
        self.outcome == Outcome::Pass
    }
}

/// Formats one output line: `PASS item (note)` or
/// `FAIL item: problem. Fix: fix`.
impl fmt::Display for Finding {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.outcome, &self.detail) {
            (Outcome::Pass, None) => write!(formatter, "PASS {}", self.item),
            (Outcome::Pass, Some(note)) => write!(formatter, "PASS {} ({note})", self.item),
            (Outcome::Fail, problem) => {
                write!(formatter, "FAIL {}", self.item)?;
                if let Some(problem) = problem {
                    write!(formatter, ": {problem}")?;
                }
                if let Some(fix) = &self.fix {
                    write!(formatter, ". Fix: {fix}")?;
                }
                Ok(())
            }
        }
    }
}

/// Runs every item of the checklist on `variables` for a deployment of
/// `instances` instances that share one database. Never generates a secret
/// and never writes a file. Connects to the database only when it is
/// PostgreSQL.
pub async fn run(variables: &Variables, instances: u32) -> Vec<Finding> {
    let config = config::load_for_inspection(variables);
    let mut findings = vec![configuration_valid(config.as_ref().err())];
    if let Ok(config) = &config {
        findings.push(debug_off(config));
    }

    findings.extend(secret_findings(variables, instances));

    // Without a valid configuration the other items cannot be judged, and
    // the first finding names what to fix.
    let Ok(config) = config else {
        return findings;
    };
    findings.push(allowed_hosts(&config));
    findings.push(https_configured(&config));
    findings.push(ssl_redirect(&config));
    findings.push(hsts_long_enough(&config));
    findings.push(shared_database(&config, instances));
    findings.push(shared_rate_limits(&config, instances));
    findings.push(database_role::audit_tables_protected(&config.database).await);
    findings.push(database_statistics::statistics_kept(&config.database).await);
    findings.push(security_alerts(&config));
    findings
}

fn configuration_valid(error: Option<&ConfigError>) -> Finding {
    const ITEM: &str = "Configuration is valid";
    match error {
        None => Finding::pass(ITEM),
        Some(error) => Finding::fail(
            ITEM,
            format!(
                "{}: {}; the items that depend on it were not checked",
                error.variable, error.problem
            ),
            &error.fix,
        ),
    }
}

fn debug_off(config: &Config) -> Finding {
    const ITEM: &str = "DEBUG is off";
    if config.debug {
        return Finding::fail(
            ITEM,
            "DEBUG is on, which accepts short and published example secrets",
            "set DEBUG=false, or unset it",
        );
    }
    Finding::pass(ITEM)
}

/// Checks `SECRET_KEY`, `JWT_SECRET_KEY` and `JWT_PREVIOUS_SECRET_KEYS`.
fn secret_findings(variables: &Variables, instances: u32) -> Vec<Finding> {
    let secret_key = configured(variables, "SECRET_KEY");
    let jwt_secret = configured(variables, "JWT_SECRET_KEY");

    let mut jwt_finding = secret_strength(&jwt_secret, instances);
    if let (Ok(Some(secret)), Ok(Some(jwt))) = (&secret_key.value, &jwt_secret.value)
        && secret.value.expose_secret() == jwt.value.expose_secret()
    {
        jwt_finding = Finding::fail(
            jwt_secret.item(),
            "JWT_SECRET_KEY is the same as SECRET_KEY, so a leak of one key gives away both",
            "set JWT_SECRET_KEY to a new random value, for example from `openssl rand -base64 48`, and keep SECRET_KEY as it is, because it keys the history chain",
        );
    }

    vec![
        secret_strength(&secret_key, instances),
        jwt_finding,
        previous_jwt_keys(variables),
    ]
}

/// A secret as read for the checklist, with its variable's name.
struct SecretReading {
    name: &'static str,
    value: Result<Option<config::ConfiguredSecret>, ConfigError>,
}

impl SecretReading {
    fn item(&self) -> String {
        format!("{} is set and strong", self.name)
    }
}

fn configured(variables: &Variables, name: &'static str) -> SecretReading {
    SecretReading {
        name,
        value: config::configured_secret(variables, name),
    }
}

fn secret_strength(reading: &SecretReading, instances: u32) -> Finding {
    let name = reading.name;
    let secret = match &reading.value {
        Err(error) => {
            return Finding::fail(
                reading.item(),
                format!("{}: {}", error.variable, error.problem),
                &error.fix,
            );
        }
        Ok(None) => {
            return Finding::fail(
                reading.item(),
                format!("{name} is not set and the secrets file does not contain it"),
                format!(
                    "set {name} to the value the service already runs with, or, on a new deployment, to a random value from `openssl rand -base64 48`"
                ),
            );
        }
        Ok(Some(secret)) => secret,
    };

    if let Err(error) = config::check_secret_strength(name, secret.value.expose_secret(), false) {
        return Finding::fail(
            reading.item(),
            format!("{name} {}", error.problem),
            format!(
                "set {name} to a random value of at least {} bytes, for example from `openssl rand -base64 48`",
                config::MIN_SECRET_BYTES
            ),
        );
    }

    match (secret.from_secrets_file, instances > 1) {
        (true, true) => Finding::pass_with_note(
            reading.item(),
            format!(
                "read from the secrets file; all {instances} instances must use the same {name}, so copy the file to each or set the variable"
            ),
        ),
        (true, false) => Finding::pass_with_note(reading.item(), "read from the secrets file"),
        (false, _) => Finding::pass(reading.item()),
    }
}

fn previous_jwt_keys(variables: &Variables) -> Finding {
    const ITEM: &str = "JWT_PREVIOUS_SECRET_KEYS are strong";
    let keys = config::previous_jwt_secrets(variables);
    if keys.is_empty() {
        return Finding::pass_with_note(ITEM, "none set");
    }

    let weak: Vec<String> = keys
        .iter()
        .enumerate()
        .filter_map(|(index, key)| {
            config::check_secret_strength("JWT_PREVIOUS_SECRET_KEYS", key.expose_secret(), false)
                .err()
                .map(|error| format!("key {} of {} {}", index + 1, keys.len(), error.problem))
        })
        .collect();
    if weak.is_empty() {
        return Finding::pass(ITEM);
    }
    Finding::fail(
        ITEM,
        weak.join("; "),
        "remove the weak keys from JWT_PREVIOUS_SECRET_KEYS; tokens they signed stop working, so their users log in again",
    )
}

fn allowed_hosts(config: &Config) -> Finding {
    const ITEM: &str = "ALLOWED_HOSTS names the service's host";
    const FIX: &str = "set ALLOWED_HOSTS to the host names clients use, separated by commas, such as cyltrack.example.co.ke";
    if config.allowed_hosts.iter().any(|host| host == "*") {
        return Finding::fail(
            ITEM,
            "ALLOWED_HOSTS contains *, which accepts any Host header",
            FIX,
        );
    }
    let public: Vec<&str> = config
        .allowed_hosts
        .iter()
        .map(String::as_str)
        .filter(|host| !LOOPBACK_HOSTS.contains(host))
        .collect();
    if public.is_empty() {
        return Finding::fail(
            ITEM,
            "ALLOWED_HOSTS is unset or lists only loopback names, so requests for any real host name get 400",
            FIX,
        );
    }
    Finding::pass_with_note(ITEM, public.join(", "))
}

fn https_configured(config: &Config) -> Finding {
    const ITEM: &str = "HTTPS is configured";
    if let Some(tls) = &config.tls {
        for (name, path) in [("TLS_CERT_FILE", &tls.cert), ("TLS_KEY_FILE", &tls.key)] {
            if let Err(error) = std::fs::File::open(path) {
                return Finding::fail(
                    ITEM,
                    format!("{name} {} cannot be read: {error}", path.display()),
                    format!("point {name} at an existing file that the service's user can read"),
                );
            }
        }
        return Finding::pass_with_note(
            ITEM,
            "cyltrack serves TLS with TLS_CERT_FILE and TLS_KEY_FILE",
        );
    }
    if let Some(everyone) = config
        .trusted_proxies
        .iter()
        .find(|network| network.prefix_len() == 0)
    {
        return Finding::fail(
            ITEM,
            format!(
                "TRUSTED_PROXIES contains {everyone}, so any client can claim any address and scheme in forwarding headers"
            ),
            "list only the addresses of your reverse proxies in TRUSTED_PROXIES, such as 127.0.0.1",
        );
    }
    if !config.trusted_proxies.is_empty() {
        return Finding::pass_with_note(ITEM, "TLS is terminated by a proxy in TRUSTED_PROXIES");
    }
    Finding::fail(
        ITEM,
        "neither TLS_CERT_FILE and TLS_KEY_FILE nor TRUSTED_PROXIES is set, so clients would send passwords and tokens in plain text",
        "set TLS_CERT_FILE and TLS_KEY_FILE to the certificate chain and private key, or run behind a TLS proxy such as deploy/nginx/cyltrack.conf and set TRUSTED_PROXIES to its address (127.0.0.1 on the same machine)",
    )
}

fn ssl_redirect(config: &Config) -> Finding {
    const ITEM: &str = "SECURE_SSL_REDIRECT is on";
    if !config.ssl_redirect {
        return Finding::fail(
            ITEM,
            "SECURE_SSL_REDIRECT is off, so plain-HTTP requests are served instead of redirected",
            "set SECURE_SSL_REDIRECT=true",
        );
    }
    Finding::pass(ITEM)
}

fn hsts_long_enough(config: &Config) -> Finding {
    const ITEM: &str = "SECURE_HSTS_SECONDS is at least one year";
    if config.hsts_seconds < MIN_HSTS_SECONDS {
        return Finding::fail(
            ITEM,
            format!(
                "SECURE_HSTS_SECONDS is {}, below {MIN_HSTS_SECONDS}",
                config.hsts_seconds
            ),
            format!(
                "set SECURE_HSTS_SECONDS={MIN_HSTS_SECONDS} once HTTPS works for every name in ALLOWED_HOSTS, because browsers then refuse plain HTTP to them for that long"
            ),
        );
    }
    Finding::pass(ITEM)
}

fn shared_database(config: &Config, instances: u32) -> Finding {
    const ITEM: &str = "Database suits the number of instances";
    match (&config.database, instances > 1) {
        (DatabaseTarget::Postgres { .. }, _) => Finding::pass(ITEM),
        (DatabaseTarget::Sqlite { .. }, false) => Finding::pass_with_note(
            ITEM,
            "SQLite serves one instance; this matters only for several instances",
        ),
        (DatabaseTarget::Sqlite { path }, true) => Finding::fail(
            ITEM,
            format!(
                "DATABASE_URL selects the SQLite file {}, which {instances} instances cannot share",
                path.display()
            ),
            "set DATABASE_URL to one PostgreSQL database for all instances, such as postgres://cyltrack_app@db.example.co.ke:5432/cyltrack",
        ),
    }
}

fn shared_rate_limits(config: &Config, instances: u32) -> Finding {
    const ITEM: &str = "Rate-limit counts are shared between instances";
    match (&config.redis_url, instances > 1) {
        (Some(_), _) => Finding::pass(ITEM),
        (None, false) => Finding::pass_with_note(
            ITEM,
            "one instance counts rate limits in memory; this matters only for several instances",
        ),
        (None, true) => Finding::fail(
            ITEM,
            format!(
                "REDIS_URL is unset, so each of the {instances} instances counts rate limits on its own and a client gets up to {instances} times its limit"
            ),
            "set REDIS_URL to one Redis server that all instances share, such as redis://redis.example.co.ke:6379/0",
        ),
    }
}

fn security_alerts(config: &Config) -> Finding {
    const ITEM: &str = "Security alerts have a destination";
    match (&config.security_email, &config.security_webhook_url) {
        (None, None) => Finding::fail(
            ITEM,
            "neither SECURITY_EMAIL nor SECURITY_WEBHOOK_URL is set, so alerts about cloned labels reach nobody",
            "set SECURITY_EMAIL to the security team's address, or SECURITY_WEBHOOK_URL to the incoming webhook of your chat or alerting tool, or both",
        ),
        (Some(_), None) => Finding::pass_with_note(ITEM, "SECURITY_EMAIL"),
        (None, Some(_)) => Finding::pass_with_note(ITEM, "SECURITY_WEBHOOK_URL"),
        (Some(_), Some(_)) => {
            Finding::pass_with_note(ITEM, "SECURITY_EMAIL and SECURITY_WEBHOOK_URL")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const SECRET: &str = "s-0123456789abcdef0123456789abcdef-secret";
    const JWT: &str = "j-0123456789abcdef0123456789abcdef-jwtkey";

    fn temp_dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    /// Variables of a production-ready single instance on SQLite, with
    /// `changes` applied; an empty value removes the variable.
    fn variables(dir: &Path, changes: &[(&str, &str)]) -> Variables {
        let mut map = Variables::new();
        let pairs = [
            (
                "SECRETS_FILE",
                dir.join("secrets.env").display().to_string(),
            ),
            (
                "DATABASE_URL",
                format!("sqlite://{}", dir.join("cyltrack.db").display()),
            ),
            ("SECRET_KEY", SECRET.to_string()),
            ("JWT_SECRET_KEY", JWT.to_string()),
            ("ALLOWED_HOSTS", "cyltrack.example.co.ke".to_string()),
            ("TRUSTED_PROXIES", "127.0.0.1".to_string()),
            ("SECURE_SSL_REDIRECT", "true".to_string()),
            ("SECURE_HSTS_SECONDS", "31536000".to_string()),
            ("SECURITY_EMAIL", "security@example.co.ke".to_string()),
        ];
        for (key, value) in pairs {
            map.insert(key.to_string(), value);
        }
        for (key, value) in changes {
            if value.is_empty() {
                map.remove(*key);
            } else {
                map.insert((*key).to_string(), (*value).to_string());
            }
        }
        map
    }

    fn config_of(variables: &Variables) -> Config {
        config::load_for_inspection(variables).unwrap()
    }

    fn find<'a>(findings: &'a [Finding], item: &str) -> &'a Finding {
        findings
            .iter()
            .find(|finding| finding.item == item)
            .unwrap_or_else(|| panic!("no item {item:?} in {findings:#?}"))
    }

    pub(super) fn assert_fails_with(finding: &Finding, problem: &str, fix: &str) {
        assert_eq!(finding.outcome, Outcome::Fail, "{finding}");
        assert!(
            finding
                .detail
                .as_deref()
                .unwrap_or_default()
                .contains(problem),
            "problem {problem:?} in: {finding}"
        );
        assert!(
            finding.fix.as_deref().unwrap_or_default().contains(fix),
            "fix {fix:?} in: {finding}"
        );
    }

    #[tokio::test]
    async fn good_configuration_passes_every_item() {
        let dir = temp_dir();
        let findings = run(&variables(dir.path(), &[]), 1).await;
        let failed: Vec<String> = findings
            .iter()
            .filter(|finding| !finding.passed())
            .map(ToString::to_string)
            .collect();
        assert!(failed.is_empty(), "failed: {failed:#?}");
        assert_eq!(findings.len(), 14, "items: {findings:#?}");
    }

    #[tokio::test]
    async fn findings_never_show_secrets() {
        let dir = temp_dir();
        let short = "short-secret-value";
        let changes = [
            ("SECRET_KEY", short),
            ("JWT_SECRET_KEY", short),
            ("JWT_PREVIOUS_SECRET_KEYS", "old-weak-key"),
        ];
        let findings = run(&variables(dir.path(), &changes), 3).await;
        let text: String = findings.iter().map(|f| format!("{f}\n")).collect();
        for secret in [short, "old-weak-key"] {
            assert!(!text.contains(secret), "{secret} printed in:\n{text}");
        }
        assert!(
            !dir.path().join("secrets.env").exists(),
            "nothing generated"
        );
    }

    #[test]
    fn debug_on_fails() {
        let dir = temp_dir();
        assert!(debug_off(&config_of(&variables(dir.path(), &[]))).passed());
        let finding = debug_off(&config_of(&variables(dir.path(), &[("DEBUG", "true")])));
        assert_fails_with(&finding, "DEBUG is on", "DEBUG=false");
    }

    #[test]
    fn missing_secret_fails() {
        let dir = temp_dir();
        let findings = secret_findings(&variables(dir.path(), &[("SECRET_KEY", "")]), 1);
        assert_fails_with(
            find(&findings, "SECRET_KEY is set and strong"),
            "SECRET_KEY is not set",
            "set SECRET_KEY",
        );
        assert!(find(&findings, "JWT_SECRET_KEY is set and strong").passed());
        assert!(
            !dir.path().join("secrets.env").exists(),
            "nothing generated"
        );
    }

    #[test]
    fn short_and_placeholder_secrets_fail() {
        let dir = temp_dir();
        let cases = [
            ("SECRET_KEY", "too-short", "bytes long"),
            (
                "SECRET_KEY",
                "your-super-secret-key-here-change-in-production",
                "published example",
            ),
            (
                "JWT_SECRET_KEY",
                "different-secret-key-for-jwt",
                "published example",
            ),
        ];
        for (name, value, problem) in cases {
            let findings = secret_findings(&variables(dir.path(), &[(name, value)]), 1);
            let finding = find(&findings, &format!("{name} is set and strong"));
            assert_fails_with(finding, problem, &format!("set {name} to a random value"));
        }
    }

    #[test]
    fn equal_secrets_fail() {
        let dir = temp_dir();
        let findings = secret_findings(&variables(dir.path(), &[("JWT_SECRET_KEY", SECRET)]), 1);
        assert!(find(&findings, "SECRET_KEY is set and strong").passed());
        assert_fails_with(
            find(&findings, "JWT_SECRET_KEY is set and strong"),
            "the same as SECRET_KEY",
            "set JWT_SECRET_KEY to a new random value",
        );
    }

    #[test]
    fn secrets_file_counts_as_set() {
        let dir = temp_dir();
        let path = dir.path().join("secrets.env");
        std::fs::write(
            &path,
            format!("SECRET_KEY={SECRET}\nJWT_SECRET_KEY={JWT}\n"),
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let vars = variables(dir.path(), &[("SECRET_KEY", ""), ("JWT_SECRET_KEY", "")]);

        let single = secret_findings(&vars, 1);
        let finding = find(&single, "SECRET_KEY is set and strong");
        assert!(finding.passed(), "{finding}");
        assert_eq!(
            finding.detail.as_deref(),
            Some("read from the secrets file")
        );

        let several = secret_findings(&vars, 2);
        let finding = find(&several, "JWT_SECRET_KEY is set and strong");
        assert!(finding.passed(), "{finding}");
        assert!(
            finding
                .detail
                .as_deref()
                .unwrap_or_default()
                .contains("all 2 instances"),
            "{finding}"
        );
    }

    #[test]
    fn weak_previous_jwt_key_fails() {
        let dir = temp_dir();
        let none = previous_jwt_keys(&variables(dir.path(), &[]));
        assert!(none.passed(), "{none}");

        let strong = format!("{JWT}-old");
        let good = previous_jwt_keys(&variables(
            dir.path(),
            &[("JWT_PREVIOUS_SECRET_KEYS", &strong)],
        ));
        assert!(good.passed(), "{good}");

        let mixed = format!("{strong},changeme");
        let finding = previous_jwt_keys(&variables(
            dir.path(),
            &[("JWT_PREVIOUS_SECRET_KEYS", &mixed)],
        ));
        assert_fails_with(&finding, "key 2 of 2", "JWT_PREVIOUS_SECRET_KEYS");
    }

    #[test]
    fn allowed_hosts_need_a_real_host() {
        let dir = temp_dir();
        let good = allowed_hosts(&config_of(&variables(dir.path(), &[])));
        assert!(good.passed(), "{good}");

        for value in ["", "localhost,127.0.0.1", "*", "cyltrack.example.co.ke,*"] {
            let finding = allowed_hosts(&config_of(&variables(
                dir.path(),
                &[("ALLOWED_HOSTS", value)],
            )));
            assert_fails_with(&finding, "ALLOWED_HOSTS", "set ALLOWED_HOSTS");
        }
    }

    #[test]
    fn https_needs_tls_files_or_a_proxy() {
        let dir = temp_dir();
        let by_proxy = https_configured(&config_of(&variables(dir.path(), &[])));
        assert!(by_proxy.passed(), "{by_proxy}");

        let neither = https_configured(&config_of(&variables(
            dir.path(),
            &[("TRUSTED_PROXIES", "")],
        )));
        assert_fails_with(&neither, "neither TLS_CERT_FILE", "TRUSTED_PROXIES");

        for everyone in ["0.0.0.0/0", "10.0.0.1,::/0"] {
            let open = https_configured(&config_of(&variables(
                dir.path(),
                &[("TRUSTED_PROXIES", everyone)],
            )));
            assert_fails_with(&open, "any client can claim", "TRUSTED_PROXIES");
        }

        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, "certificate").unwrap();
        let cert_text = cert.display().to_string();
        let key_text = key.display().to_string();
        let tls = [
            ("TRUSTED_PROXIES", ""),
            ("TLS_CERT_FILE", cert_text.as_str()),
            ("TLS_KEY_FILE", key_text.as_str()),
        ];
        let unreadable = https_configured(&config_of(&variables(dir.path(), &tls)));
        assert_fails_with(&unreadable, "TLS_KEY_FILE", "point TLS_KEY_FILE");

        std::fs::write(&key, "private key").unwrap();
        let readable = https_configured(&config_of(&variables(dir.path(), &tls)));
        assert!(readable.passed(), "{readable}");
    }

    #[test]
    fn ssl_redirect_must_be_on() {
        let dir = temp_dir();
        assert!(ssl_redirect(&config_of(&variables(dir.path(), &[]))).passed());
        let finding = ssl_redirect(&config_of(&variables(
            dir.path(),
            &[("SECURE_SSL_REDIRECT", "false")],
        )));
        assert_fails_with(
            &finding,
            "SECURE_SSL_REDIRECT is off",
            "SECURE_SSL_REDIRECT=true",
        );
    }

    #[test]
    fn hsts_below_one_year_fails() {
        let dir = temp_dir();
        assert!(hsts_long_enough(&config_of(&variables(dir.path(), &[]))).passed());
        for value in ["", "0", "31535999"] {
            let finding = hsts_long_enough(&config_of(&variables(
                dir.path(),
                &[("SECURE_HSTS_SECONDS", value)],
            )));
            assert_fails_with(&finding, "below 31536000", "SECURE_HSTS_SECONDS=31536000");
        }
    }

    #[test]
    fn several_instances_need_postgres_and_redis() {
        let dir = temp_dir();
        let sqlite = config_of(&variables(dir.path(), &[]));
        let database = shared_database(&sqlite, 1);
        assert!(database.passed(), "{database}");
        assert!(
            database
                .detail
                .unwrap_or_default()
                .contains("several instances")
        );
        let redis = shared_rate_limits(&sqlite, 1);
        assert!(redis.passed(), "{redis}");
        assert!(
            redis
                .detail
                .unwrap_or_default()
                .contains("several instances")
        );

        assert_fails_with(&shared_database(&sqlite, 3), "3 instances", "DATABASE_URL");
        assert_fails_with(
            &shared_rate_limits(&sqlite, 3),
            "REDIS_URL is unset",
            "REDIS_URL",
        );

        let shared = config_of(&variables(
            dir.path(),
            &[
                (
                    "DATABASE_URL",
                    "postgres://cyltrack_app@127.0.0.1:5432/cyltrack",
                ),
                ("REDIS_URL", "redis://127.0.0.1:6379/0"),
            ],
        ));
        assert!(shared_database(&shared, 3).passed());
        assert!(shared_rate_limits(&shared, 3).passed());
    }

    #[test]
    fn alerts_need_email_or_webhook() {
        let dir = temp_dir();
        assert!(security_alerts(&config_of(&variables(dir.path(), &[]))).passed());
        let webhook = security_alerts(&config_of(&variables(
            dir.path(),
            &[
                ("SECURITY_EMAIL", ""),
                (
                    "SECURITY_WEBHOOK_URL",
                    "https://hooks.example.co.ke/cyltrack",
                ),
            ],
        )));
        assert!(webhook.passed(), "{webhook}");

        let neither = security_alerts(&config_of(&variables(
            dir.path(),
            &[("SECURITY_EMAIL", "")],
        )));
        assert_fails_with(&neither, "reach nobody", "SECURITY_EMAIL");
    }

    #[tokio::test]
    async fn invalid_configuration_is_one_failure() {
        let dir = temp_dir();
        let findings = run(
            &variables(dir.path(), &[("SECURE_HSTS_SECONDS", "forever")]),
            1,
        )
        .await;
        assert_fails_with(
            find(&findings, "Configuration is valid"),
            "SECURE_HSTS_SECONDS",
            "use a number",
        );
        assert!(find(&findings, "SECRET_KEY is set and strong").passed());
        assert!(
            findings
                .iter()
                .all(|finding| finding.item != "HTTPS is configured"),
            "dependent items skipped: {findings:#?}"
        );
    }
}
