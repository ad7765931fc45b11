//! Typed configuration, read once at start-up from the environment and an
//! optional `.env` file. The variable names match those that deployments of
//! the earlier Django version of this system already set.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::domain::Role;
use crate::domain::codes::{fill_random, keyed_mac};
use crate::domain::scan::TamperPolicy;
use crate::domain::value::Email;

/// Secrets that example configurations publish. A deployment that copied
/// one of them has no secret at all, so they are rejected when `DEBUG` is off.
const PLACEHOLDER_SECRETS: &[&str] = &[
    "your-super-secret-key-here-change-in-production",
    "different-secret-key-for-jwt",
    "change-me",
    "changeme",
    "secret",
    "your-secret-key",
];

/// The shortest secret accepted when `DEBUG` is off, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// The host names of this machine itself, allowed when `ALLOWED_HOSTS` is
/// unset and always allowed with `DEBUG` on.
pub const LOOPBACK_HOSTS: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// Default file that keeps generated secrets, relative to the working
/// directory.
const DEFAULT_SECRETS_FILE: &str = "cyltrack-secrets.env";

/// The database a deployment uses.
#[derive(Debug, Clone)]
pub enum DatabaseTarget {
    /// An embedded SQLite database file, for a single depot.
    Sqlite { path: PathBuf },
    /// A PostgreSQL server, for several instances behind a load balancer.
    /// The URL may hold a password, so it is kept secret.
    Postgres { url: SecretString },
}

/// Format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// One key that signs or verifies JSON Web Tokens.
#[derive(Clone)]
pub struct JwtKey {
    /// The `kid` header value: derived from the secret, so that the same
    /// secret always has the same id and the id reveals nothing of it.
    pub id: String,
    pub secret: SecretString,
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("JwtKey")
            .field("id", &self.id)
            .field("secret", &"[redacted]")
            .finish()
    }
}

impl JwtKey {
    fn new(secret: SecretString) -> Self {
        use hmac::Mac;
        let mut mac = keyed_mac(secret.expose_secret().as_bytes());
        mac.update(b"cyltrack JWT key id");
        let id = hex::encode(&mac.finalize().into_bytes()[..8]);
        Self { id, secret }
    }
}

/// Settings of the JSON Web Tokens that the API issues.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// The only algorithm accepted; every other one, `none` included, is
    /// rejected.
    pub algorithm: jsonwebtoken::Algorithm,
    /// Signs new tokens.
    pub current: JwtKey,
    /// Still verify tokens signed before a key rotation.
    pub previous: Vec<JwtKey>,
    pub access_lifetime: Duration,
    pub refresh_lifetime: Duration,
}

/// Hourly request limits per role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleLimits {
    pub customer: u32,
    pub driver: u32,
    pub dispatcher: u32,
    pub admin: u32,
}

impl RoleLimits {
    /// Returns the hourly limit of `role`.
    pub fn of(&self, role: Role) -> u32 {
        match role {
            Role::Customer => self.customer,
            Role::Driver => self.driver,
            Role::Dispatcher => self.dispatcher,
            Role::Admin => self.admin,
        }
    }
}

/// The rate limits, each counted per hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Scans per user.
    pub scans: RoleLimits,
    /// Authenticated API calls per user, scans included.
    pub api: RoleLimits,
    /// Requests per client IP address to endpoints that need no token.
    pub anonymous: u32,
}

/// The certificate chain and private key for serving HTTPS directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Bounds on what one request or the whole server may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Maximum number of header fields in one request.
    pub max_headers: usize,
    /// The largest request line and headers together, in bytes.
    pub max_head_bytes: usize,
    /// How long one request may take, from its headers to its response.
    pub request_timeout: Duration,
    /// Requests served at once; more get 503 at once.
    pub max_concurrent_requests: usize,
}

/// The whole configuration of a cyltrack process.
#[derive(Debug, Clone)]
pub struct Config {
    pub debug: bool,
    /// Keys the HMACs that bind a cylinder's codes to its secret.
    pub secret_key: SecretString,
    pub allowed_hosts: Vec<String>,
    pub database: DatabaseTarget,
    pub jwt: JwtConfig,
    pub rate_limits: RateLimits,
    /// Redis server that several instances share their rate-limit counts
    /// through. The URL may contain a password, so it is kept secret.
    pub redis_url: Option<SecretString>,
    /// Prefix of every Redis key, so that deployments can share a server.
    pub redis_key_prefix: String,
    /// Proxies whose forwarding headers name the client and the scheme.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `max-age` of the Strict-Transport-Security header; 0 sends none.
    pub hsts_seconds: u64,
    pub hsts_include_subdomains: bool,
    /// Redirects plain-HTTP requests to HTTPS.
    pub ssl_redirect: bool,
    /// Serves HTTPS itself when set, instead of behind a TLS proxy.
    pub tls: Option<TlsFiles>,
    pub server_limits: ServerLimits,
    pub security_email: Option<Email>,
    pub security_webhook_url: Option<String>,
    pub listen_addr: SocketAddr,
    pub log_format: LogFormat,
    /// Thresholds of the cloning rules applied to every scan.
    pub tamper: TamperPolicy,
    /// How long a scan's auth token stays valid.
    pub scan_token_lifetime: Duration,
}

/// A configuration value that stops start-up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {problem}. Fix: {fix}")]
pub struct ConfigError {
    pub variable: String,
    pub problem: String,
    pub fix: String,
}

impl ConfigError {
    fn new(variable: &str, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            variable: variable.to_string(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// The variables a configuration is read from.
pub type Variables = BTreeMap<String, String>;

/// Reads the process environment over the variables of `.env` in the
/// working directory, if that file exists. Process variables win.
pub fn process_variables() -> Result<Variables, ConfigError> {
    let mut variables = Variables::new();
    match dotenvy::from_path_iter(".env") {
        Ok(entries) => {
            for entry in entries {
                let (key, value) = entry.map_err(|error| {
                    ConfigError::new(
                        ".env",
                        format!("cannot be parsed: {error}"),
                        "write one KEY=value per line",
                    )
                })?;
                variables.insert(key, value);
            }
        }
        Err(error) if error.not_found() => {}
        Err(error) => {
            return Err(ConfigError::new(
                ".env",
                format!("cannot be read: {error}"),
                "check the file's permissions",
            ));
        }
    }
    variables.extend(std::env::vars());
    Ok(variables)
}

/// Reads the configuration from `variables`. Secrets that are not set are
/// generated and kept in the secrets file; `generated` lists their names.
pub fn load(variables: &Variables) -> Result<(Config, Vec<&'static str>), ConfigError> {
    load_with(variables, MissingSecrets::Generate)
}

/// The handling of a secret that is neither set nor in the secrets file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingSecrets {
    /// Generate it and keep it in the secrets file.
    Generate,
    /// Stop with an error. Commands that check data written with an
    /// existing key, such as `audit verify`, must never make a new one.
    Reject,
}

/// Reads the configuration like [`load`], with a choice about missing
/// secrets.
pub fn load_with(
    variables: &Variables,
    missing: MissingSecrets,
) -> Result<(Config, Vec<&'static str>), ConfigError> {
    let reader = Reader { variables };

    let debug = reader.boolean("DEBUG", false)?;
    let mut store = SecretsFile::open(&reader.secrets_path())?;
    store.may_generate = missing == MissingSecrets::Generate;

    let secret_key = reader.secret("SECRET_KEY", debug, &mut store)?;
    let jwt_secret = reader.secret("JWT_SECRET_KEY", debug, &mut store)?;
    if !debug && secret_key.expose_secret() == jwt_secret.expose_secret() {
        return Err(ConfigError::new(
            "JWT_SECRET_KEY",
            "is the same as SECRET_KEY",
            "give each its own random value, for example from `openssl rand -base64 48`",
        ));
    }
    store.save()?;

    let config = reader.config(debug, secret_key, jwt_secret, debug)?;
    Ok((config, store.generated))
}

/// Reads the configuration for an inspection such as `check --deploy`,
/// which reports weak and missing secrets itself instead of stopping at the
/// first one. Secrets are taken as set, without strength checks. A missing
/// secret is replaced by a random value that is never saved, so the result
/// must not serve requests or check stored data.
pub(crate) fn load_for_inspection(variables: &Variables) -> Result<Config, ConfigError> {
    let reader = Reader { variables };

    let debug = reader.boolean("DEBUG", false)?;
    let mut store = SecretsFile::open(&reader.secrets_path())?;
    let secret_key = reader.unchecked_secret("SECRET_KEY", &mut store)?;
    let jwt_secret = reader.unchecked_secret("JWT_SECRET_KEY", &mut store)?;

    reader.config(debug, secret_key, jwt_secret, true)
}

/// A secret as the service would read it, before any strength check.
pub(crate) struct ConfiguredSecret {
    pub value: SecretString,
    /// True when the value comes from the secrets file, not a variable.
    pub from_secrets_file: bool,
}

/// Reads the secret `name` from its variable or, when that is unset, from
/// the secrets file. Returns `None` when neither has it. Nothing is
/// generated or checked.
pub(crate) fn configured_secret(
    variables: &Variables,
    name: &str,
) -> Result<Option<ConfiguredSecret>, ConfigError> {
    let reader = Reader { variables };
    if let Some(value) = reader.text(name) {
        return Ok(Some(ConfiguredSecret {
            value: SecretString::from(value.to_string()),
            from_secrets_file: false,
        }));
    }

    let store = SecretsFile::open(&reader.secrets_path())?;
    Ok(store.values.get(name).map(|value| ConfiguredSecret {
        value: SecretString::from(value.clone()),
        from_secrets_file: true,
    }))
}

/// Reads the keys of `JWT_PREVIOUS_SECRET_KEYS` without checking them.
pub(crate) fn previous_jwt_secrets(variables: &Variables) -> Vec<SecretString> {
    Reader { variables }
        .list("JWT_PREVIOUS_SECRET_KEYS")
        .into_iter()
        .map(SecretString::from)
        .collect()
}

struct Reader<'a> {
    variables: &'a Variables,
}

impl Reader<'_> {
    /// Reads every setting around the two secrets. With
    /// `accept_weak_secrets`, previous JWT keys are not checked for strength.
    fn config(
        &self,
        debug: bool,
        secret_key: SecretString,
        jwt_secret: SecretString,
        accept_weak_secrets: bool,
    ) -> Result<Config, ConfigError> {
        let config = Config {
            debug,
            secret_key,
            allowed_hosts: self.allowed_hosts()?,
            database: self.database()?,
            jwt: JwtConfig {
                algorithm: self.jwt_algorithm()?,
                current: JwtKey::new(jwt_secret),
                previous: self.previous_jwt_keys(accept_weak_secrets)?,
                access_lifetime: self.seconds("JWT_ACCESS_TOKEN_LIFETIME", 3600, 60, 86_400)?,
                refresh_lifetime: self.seconds(
                    "JWT_REFRESH_TOKEN_LIFETIME",
                    604_800,
                    300,
                    7_776_000,
                )?,
            },
            rate_limits: self.rate_limits()?,
            redis_url: self.redis_url()?,
            redis_key_prefix: self.redis_key_prefix()?,
            trusted_proxies: self.trusted_proxies()?,
            hsts_seconds: self.whole("SECURE_HSTS_SECONDS", 0, 0, 63_072_000)?,
            hsts_include_subdomains: self.boolean("SECURE_HSTS_INCLUDE_SUBDOMAINS", false)?,
            ssl_redirect: self.boolean("SECURE_SSL_REDIRECT", false)?,
            tls: self.tls_files()?,
            server_limits: self.server_limits()?,
            security_email: self.email("SECURITY_EMAIL")?,
            security_webhook_url: self.webhook_url("SECURITY_WEBHOOK_URL")?,
            listen_addr: self.socket_addr("LISTEN_ADDR", "127.0.0.1:8000")?,
            log_format: self.log_format()?,
            tamper: self.tamper_policy()?,
            scan_token_lifetime: self.seconds("SCAN_TOKEN_LIFETIME", 300, 30, 3600)?,
        };
        if config.jwt.refresh_lifetime <= config.jwt.access_lifetime {
            return Err(ConfigError::new(
                "JWT_REFRESH_TOKEN_LIFETIME",
                "must be longer than JWT_ACCESS_TOKEN_LIFETIME",
                "set it to several times the access token lifetime, for example 604800 (7 days)",
            ));
        }
        Ok(config)
    }

    fn secrets_path(&self) -> PathBuf {
        PathBuf::from(self.text("SECRETS_FILE").unwrap_or(DEFAULT_SECRETS_FILE))
    }

    /// Returns the trimmed value of `name`, treating an empty value as unset.
    fn text(&self, name: &str) -> Option<&str> {
        self.variables
            .get(name)
            .map(|value| value.trim())
            .filter(|value| !value.is_empty())
    }

    fn boolean(&self, name: &str, default: bool) -> Result<bool, ConfigError> {
        let Some(value) = self.text(name) else {
            return Ok(default);
        };
        match value.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(ConfigError::new(
                name,
                format!("'{value}' is not a boolean"),
                "use true or false",
            )),
        }
    }

    fn list(&self, name: &str) -> Vec<String> {
        self.text(name)
            .map(|value| {
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Reads `ALLOWED_HOSTS`: host names or IP addresses, each optionally
    /// with a leading dot for every subdomain, or `*` for any host. Unset,
    /// only the loopback names are allowed.
    fn allowed_hosts(&self) -> Result<Vec<String>, ConfigError> {
        let mut hosts = self.list("ALLOWED_HOSTS");
        if hosts.is_empty() {
            hosts = LOOPBACK_HOSTS.iter().map(|host| host.to_string()).collect();
        }
        for host in &hosts {
            let name = host.strip_prefix('.').unwrap_or(host);
            let valid = host == "*"
                || name.parse::<std::net::IpAddr>().is_ok()
                || (!name.is_empty()
                    && name.len() <= 253
                    && name.split('.').all(|label| {
                        !label.is_empty()
                            && label.len() <= 63
                            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    }));
            if !valid {
                return Err(ConfigError::new(
                    "ALLOWED_HOSTS",
                    format!("'{host}' is not a host name"),
                    "list bare host names separated by commas, such as cyltrack.example.co.ke,.example.co.ke, without scheme, port or path",
                ));
            }
        }
        Ok(hosts)
    }

    /// Reads a whole number from `min` to `max`.
    fn whole(&self, name: &str, default: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
        let Some(value) = self.text(name) else {
            return Ok(default);
        };
        match value.parse::<u64>() {
            Ok(number) if (min..=max).contains(&number) => Ok(number),
            _ => Err(ConfigError::new(
                name,
                format!("'{value}' is not a whole number from {min} to {max}"),
                format!("use a number such as {default}"),
            )),
        }
    }

    /// Reads the hourly limits of every role: `{base}_{ROLE}` when set,
    /// otherwise the role's default. Customers default to `{base}` itself.
    fn role_limits(&self, base: &str, defaults: RoleLimits) -> Result<RoleLimits, ConfigError> {
        let customer_default = self.positive(base, defaults.customer)?;
        Ok(RoleLimits {
            customer: self.positive(&format!("{base}_CUSTOMER"), customer_default)?,
            driver: self.positive(&format!("{base}_DRIVER"), defaults.driver)?,
            dispatcher: self.positive(&format!("{base}_DISPATCHER"), defaults.dispatcher)?,
            admin: self.positive(&format!("{base}_ADMIN"), defaults.admin)?,
        })
    }

    fn rate_limits(&self) -> Result<RateLimits, ConfigError> {
        let scans = self.role_limits(
            "SCAN_RATE_LIMIT",
            RoleLimits {
                customer: 100,
                driver: 1000,
                dispatcher: 2000,
                admin: 2000,
            },
        )?;
        let api = self.role_limits(
            "API_RATE_LIMIT",
            RoleLimits {
                customer: 1000,
                driver: 3000,
                dispatcher: 5000,
                admin: 5000,
            },
        )?;
        for role in Role::ALL {
            if api.of(role) < scans.of(role) {
                let name = format!("API_RATE_LIMIT_{}", role.as_str());
                return Err(ConfigError::new(
                    &name,
                    format!(
                        "allows {} calls an hour, fewer than the {} scans SCAN_RATE_LIMIT_{} allows, and every scan is an API call",
                        api.of(role),
                        scans.of(role),
                        role.as_str()
                    ),
                    format!("set {name} to at least {}", scans.of(role)),
                ));
            }
        }
        Ok(RateLimits {
            scans,
            api,
            anonymous: self.positive("ANONYMOUS_RATE_LIMIT", 300)?,
        })
    }

    fn redis_url(&self) -> Result<Option<SecretString>, ConfigError> {
        let Some(value) = self.text("REDIS_URL") else {
            return Ok(None);
        };
        let rest = value
            .strip_prefix("redis://")
            .filter(|rest| !rest.is_empty());
        let parsed = redis::IntoConnectionInfo::into_connection_info(value);
        if rest.is_none()
            || parsed.is_err()
            || value.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ConfigError::new(
                "REDIS_URL",
                "is not a valid redis:// URL with a host, an optional port from 1 to 65535 and an optional database number",
                "use a URL such as redis://127.0.0.1:6379/0",
            ));
        }
        Ok(Some(SecretString::from(value.to_string())))
    }

    fn redis_key_prefix(&self) -> Result<String, ConfigError> {
        let value = self.text("REDIS_KEY_PREFIX").unwrap_or("cyltrack:");
        let valid = value.len() <= 64
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-' | '.'));
        if !valid {
            return Err(ConfigError::new(
                "REDIS_KEY_PREFIX",
                format!("'{value}' is not a key prefix of up to 64 letters, digits and : _ - ."),
                "use a short name ending in a colon, such as cyltrack-brand-a:",
            ));
        }
        Ok(value.to_string())
    }

    /// Reads `TRUSTED_PROXIES`: networks in CIDR notation or single
    /// addresses, separated by commas.
    fn trusted_proxies(&self) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        self.list("TRUSTED_PROXIES")
            .iter()
            .map(|item| {
                item.parse::<ipnet::IpNet>()
                    .or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map(|network| network.trunc())
                    .map_err(|_| {
                        ConfigError::new(
                            "TRUSTED_PROXIES",
                            format!("'{item}' is not an IP address or a network in CIDR notation"),
                            "list the proxies' addresses or networks, such as 10.0.0.5,10.1.0.0/16,fd00::/8",
                        )
                    })
            })
            .collect()
    }

    fn tls_files(&self) -> Result<Option<TlsFiles>, ConfigError> {
        match (self.text("TLS_CERT_FILE"), self.text("TLS_KEY_FILE")) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert: PathBuf::from(cert),
                key: PathBuf::from(key),
            })),
            (Some(_), None) => Err(ConfigError::new(
                "TLS_KEY_FILE",
                "is missing while TLS_CERT_FILE is set",
                "set both to serve HTTPS, or neither to serve plain HTTP behind a TLS proxy",
            )),
            (None, Some(_)) => Err(ConfigError::new(
                "TLS_CERT_FILE",
                "is missing while TLS_KEY_FILE is set",
                "set both to serve HTTPS, or neither to serve plain HTTP behind a TLS proxy",
            )),
        }
    }

    fn server_limits(&self) -> Result<ServerLimits, ConfigError> {
        Ok(ServerLimits {
            max_body_bytes: self.whole("MAX_REQUEST_BODY_BYTES", 65_536, 1024, 16 * 1024 * 1024)?
                as usize,
            max_headers: self.whole("MAX_REQUEST_HEADERS", 64, 16, 1024)? as usize,
            max_head_bytes: self.whole("MAX_REQUEST_HEAD_BYTES", 16_384, 8192, 1024 * 1024)?
                as usize,
            request_timeout: self.seconds("REQUEST_TIMEOUT", 30, 1, 3600)?,
            max_concurrent_requests: self.whole("MAX_CONCURRENT_REQUESTS", 256, 1, 100_000)?
                as usize,
        })
    }

    fn positive(&self, name: &str, default: u32) -> Result<u32, ConfigError> {
        let Some(value) = self.text(name) else {
            return Ok(default);
        };
        match value.parse::<u32>() {
            Ok(number) if number > 0 => Ok(number),
            _ => Err(ConfigError::new(
                name,
                format!("'{value}' is not a whole number from 1 to {}", u32::MAX),
                format!("use a number such as {default}"),
            )),
        }
    }

    fn seconds(
        &self,
        name: &str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<Duration, ConfigError> {
        let Some(value) = self.text(name) else {
            return Ok(Duration::from_secs(default));
        };
        match value.parse::<u64>() {
            Ok(seconds) if (min..=max).contains(&seconds) => Ok(Duration::from_secs(seconds)),
            _ => Err(ConfigError::new(
                name,
                format!("'{value}' is not a number of seconds from {min} to {max}"),
                format!("use whole seconds, for example {default}"),
            )),
        }
    }

    fn socket_addr(&self, name: &str, default: &str) -> Result<SocketAddr, ConfigError> {
        let value = self.text(name).unwrap_or(default);
        value.parse().map_err(|_| {
            ConfigError::new(
                name,
                format!("'{value}' is not an IP address and port"),
                "use the form 127.0.0.1:8000 or [::1]:8000",
            )
        })
    }

    fn email(&self, name: &str) -> Result<Option<Email>, ConfigError> {
        let Some(value) = self.text(name) else {
            return Ok(None);
        };
        let email = Email::parse("address", value).map_err(|error| {
            ConfigError::new(
                name,
                format!("'{value}': {error}"),
                "use an address such as security@example.co.ke",
            )
        })?;
        if email.as_str().ends_with("@yourdomain.com") {
            return Err(ConfigError::new(
                name,
                "is the example address from the documentation",
                "set the security team's real address",
            ));
        }
        Ok(Some(email))
    }

    fn webhook_url(&self, name: &str) -> Result<Option<String>, ConfigError> {
        let Some(value) = self.text(name) else {
            return Ok(None);
        };
        let host = value
            .strip_prefix("https://")
            .or_else(|| value.strip_prefix("http://"))
            .and_then(|rest| rest.split(['/', '?', '#']).next())
            .filter(|host| !host.is_empty());
        if host.is_none() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ConfigError::new(
                name,
                format!("'{value}' is not an http or https URL"),
                "use a URL such as https://hooks.example.com/cyltrack",
            ));
        }
        if value.contains("/your-webhook") {
            return Err(ConfigError::new(
                name,
                "is the example URL from the documentation",
                "set the URL your chat or alerting tool gave you",
            ));
        }
        Ok(Some(value.to_string()))
    }

    fn database(&self) -> Result<DatabaseTarget, ConfigError> {
        let Some(value) = self.text("DATABASE_URL") else {
            return Ok(DatabaseTarget::Sqlite {
                path: PathBuf::from("cyltrack.db"),
            });
        };
        if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            return Ok(DatabaseTarget::Postgres {
                url: SecretString::from(value.to_string()),
            });
        }
        let path = value
            .strip_prefix("sqlite://")
            .or_else(|| value.strip_prefix("sqlite:"))
            .map(|rest| rest.split('?').next().unwrap_or(rest))
            .filter(|path| !path.is_empty());
        match path {
            Some(path) => Ok(DatabaseTarget::Sqlite {
                path: PathBuf::from(path),
            }),
            None => Err(ConfigError::new(
                "DATABASE_URL",
                "is neither a postgres:// nor a sqlite:// URL",
                "use postgres://user@host:5432/cyltrack, sqlite://path/to/cyltrack.db, or unset it for cyltrack.db in the working directory",
            )),
        }
    }

    fn jwt_algorithm(&self) -> Result<jsonwebtoken::Algorithm, ConfigError> {
        use jsonwebtoken::Algorithm;
        match self.text("JWT_ALGORITHM").unwrap_or("HS256") {
            "HS256" => Ok(Algorithm::HS256),
            "HS384" => Ok(Algorithm::HS384),
            "HS512" => Ok(Algorithm::HS512),
            other => Err(ConfigError::new(
                "JWT_ALGORITHM",
                format!("'{other}' is not supported"),
                "use HS256, HS384 or HS512",
            )),
        }
    }

    fn previous_jwt_keys(&self, debug: bool) -> Result<Vec<JwtKey>, ConfigError> {
        let mut keys = Vec::new();
        for secret in self.list("JWT_PREVIOUS_SECRET_KEYS") {
            check_secret_strength("JWT_PREVIOUS_SECRET_KEYS", &secret, debug)?;
            keys.push(JwtKey::new(SecretString::from(secret)));
        }
        Ok(keys)
    }

    fn tamper_policy(&self) -> Result<TamperPolicy, ConfigError> {
        let defaults = TamperPolicy::default();
        let window = self.seconds("SCAN_RAPID_WINDOW", 300, 10, 86_400)?;
        let max_speed = self.positive("SCAN_MAX_SPEED_KMH", 150)?;
        if max_speed > 2000 {
            return Err(ConfigError::new(
                "SCAN_MAX_SPEED_KMH",
                format!("{max_speed} km/h is faster than any vehicle that carries cylinders"),
                "use the fastest plausible average speed by road, such as 150",
            ));
        }
        Ok(TamperPolicy {
            rapid_limit: self.positive("SCAN_RAPID_LIMIT", defaults.rapid_limit)?,
            rapid_window: chrono::Duration::seconds(window.as_secs() as i64),
            max_speed_kmh: f64::from(max_speed),
            ..defaults
        })
    }

    fn log_format(&self) -> Result<LogFormat, ConfigError> {
        match self
            .text("LOG_FORMAT")
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("text") => Ok(LogFormat::Text),
            Some("json") => Ok(LogFormat::Json),
            Some(other) => Err(ConfigError::new(
                "LOG_FORMAT",
                format!("'{other}' is not a log format"),
                "use text or json",
            )),
        }
    }

    /// Reads the secret `name`, or takes it from the secrets file, or
    /// generates it there when neither has it.
    fn secret(
        &self,
        name: &'static str,
        debug: bool,
        store: &mut SecretsFile,
    ) -> Result<SecretString, ConfigError> {
        let value = self.unchecked_secret(name, store)?;
        check_secret_strength(name, value.expose_secret(), debug)?;
        Ok(value)
    }

    /// Reads the secret `name`, or takes it from the secrets file, or
    /// generates it into `store` when neither has it and `store` may
    /// generate. Only [`SecretsFile::save`] writes a generated value to disk.
    fn unchecked_secret(
        &self,
        name: &'static str,
        store: &mut SecretsFile,
    ) -> Result<SecretString, ConfigError> {
        let value = match self.text(name) {
            Some(value) => value.to_string(),
            None => store.get_or_generate(name)?,
        };
        Ok(SecretString::from(value))
    }
}

/// Rejects placeholders and, when `debug` is off, secrets shorter than
/// [`MIN_SECRET_BYTES`].
pub(crate) fn check_secret_strength(
    name: &str,
    value: &str,
    debug: bool,
) -> Result<(), ConfigError> {
    let fix = "generate a random value, for example with `openssl rand -base64 48`, or unset it to have cyltrack generate one";
    let placeholder = PLACEHOLDER_SECRETS
        .iter()
        .any(|known| known.eq_ignore_ascii_case(value))
        || value.starts_with("django-insecure-");
    if placeholder && !debug {
        return Err(ConfigError::new(
            name,
            "is a published example value, not a secret",
            fix,
        ));
    }
    if value.len() < MIN_SECRET_BYTES && !debug {
        return Err(ConfigError::new(
            name,
            format!(
                "is {} bytes long; at least {MIN_SECRET_BYTES} are required when DEBUG is off",
                value.len()
            ),
            fix,
        ));
    }
    Ok(())
}

/// The file that keeps secrets cyltrack generated, one `NAME=value` per
/// line, readable by its owner only.
struct SecretsFile {
    path: PathBuf,
    values: BTreeMap<String, String>,
    generated: Vec<&'static str>,
    may_generate: bool,
}

impl SecretsFile {
    fn open(path: &Path) -> Result<Self, ConfigError> {
        let mut values = BTreeMap::new();
        if path.exists() {
            check_owner_only(path)?;
            let entries =
                dotenvy::from_path_iter(path).map_err(|error| secrets_file_error(path, &error))?;
            for entry in entries {
                let (key, value) = entry.map_err(|error| secrets_file_error(path, &error))?;
                values.insert(key, value);
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            values,
            generated: Vec::new(),
            may_generate: true,
        })
    }

    fn get_or_generate(&mut self, name: &'static str) -> Result<String, ConfigError> {
        if let Some(value) = self.values.get(name) {
            return Ok(value.clone());
        }
        if !self.may_generate {
            return Err(ConfigError::new(
                name,
                format!("is not set and {} does not contain it", self.path.display()),
                "set it, or SECRETS_FILE, to the value the service runs with",
            ));
        }
        let mut bytes = [0u8; 48];
        fill_random(&mut bytes).map_err(|error| {
            ConfigError::new(name, error.to_string(), "set the variable yourself")
        })?;
        let value = hex::encode(bytes);
        self.values.insert(name.to_string(), value.clone());
        self.generated.push(name);
        Ok(value)
    }

    /// Writes the file when a secret was generated, creating it with mode
    /// 0600 so that no other user can read it at any point.
    fn save(&self) -> Result<(), ConfigError> {
        if self.generated.is_empty() {
            return Ok(());
        }
        let mut text = String::from(
            "# Secrets generated by cyltrack. Keep this file private and back it up.\n",
        );
        for (key, value) in &self.values {
            text.push_str(&format!("{key}={value}\n"));
        }
        write_owner_only(&self.path, text.as_bytes()).map_err(|error| {
            ConfigError::new(
                "SECRETS_FILE",
                format!("{} cannot be written: {error}", self.path.display()),
                "point SECRETS_FILE at a writable path, or set SECRET_KEY and JWT_SECRET_KEY",
            )
        })
    }
}

fn secrets_file_error(path: &Path, error: &dotenvy::Error) -> ConfigError {
    ConfigError::new(
        "SECRETS_FILE",
        format!("{} cannot be read: {error}", path.display()),
        "fix or remove the file; removing it generates new secrets and logs everyone out",
    )
}

#[cfg(unix)]
fn check_owner_only(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|error| {
            ConfigError::new(
                "SECRETS_FILE",
                format!("{} cannot be read: {error}", path.display()),
                "check the path",
            )
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(ConfigError::new(
            "SECRETS_FILE",
            format!(
                "{} can be read by other users (mode {:o})",
                path.display(),
                mode & 0o777
            ),
            format!("run `chmod 600 {}`", path.display()),
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_owner_only(_path: &Path) -> Result<(), ConfigError> {
    Ok(())
}

#[cfg(unix)]
fn write_owner_only(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_owner_only(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variables(dir: &Path, pairs: &[(&str, &str)]) -> Variables {
        let mut map = Variables::new();
        map.insert(
            "SECRETS_FILE".into(),
            dir.join("secrets.env").display().to_string(),
        );
        for (key, value) in pairs {
            map.insert((*key).into(), (*value).into());
        }
        map
    }

    fn strong(tag: char) -> String {
        tag.to_string().repeat(40)
    }

    fn temp_dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap_or_else(|error| unreachable!("temp dir: {error}"))
    }

    #[test]
    fn defaults_generate_secrets_once() {
        let dir = temp_dir();
        let vars = variables(dir.path(), &[]);
        let (first, generated) = load(&vars)
            .map_err(|e| e.to_string())
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(generated, vec!["SECRET_KEY", "JWT_SECRET_KEY"]);
        assert_eq!(first.listen_addr.to_string(), "127.0.0.1:8000");
        assert_eq!(first.jwt.access_lifetime, Duration::from_secs(3600));
        assert_eq!(first.jwt.refresh_lifetime, Duration::from_secs(604_800));
        assert!(matches!(first.database, DatabaseTarget::Sqlite { .. }));

        let (second, generated) = load(&vars)
            .map_err(|e| e.to_string())
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert!(generated.is_empty());
        assert_eq!(
            first.secret_key.expose_secret(),
            second.secret_key.expose_secret()
        );
        assert_eq!(first.jwt.current.id, second.jwt.current.id);
    }

    #[cfg(unix)]
    #[test]
    fn secrets_file_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir();
        let vars = variables(dir.path(), &[]);
        assert!(load(&vars).is_ok());
        let path = dir.path().join("secrets.env");
        let mode = std::fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o777)
            .ok();
        assert_eq!(mode, Some(0o600));

        let widened = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644));
        assert!(widened.is_ok());
        let error = load(&vars).err().map(|e| e.variable);
        assert_eq!(error.as_deref(), Some("SECRETS_FILE"));
    }

    #[test]
    fn placeholder_secret_rejected_without_debug() {
        let dir = temp_dir();
        let jwt = strong('j');
        let vars = variables(
            dir.path(),
            &[
                (
                    "SECRET_KEY",
                    "your-super-secret-key-here-change-in-production",
                ),
                ("JWT_SECRET_KEY", &jwt),
            ],
        );
        let error = load(&vars).err();
        assert_eq!(
            error.as_ref().map(|e| e.variable.as_str()),
            Some("SECRET_KEY")
        );
        assert!(
            error
                .map(|e| e.problem)
                .unwrap_or_default()
                .contains("example")
        );
    }

    #[test]
    fn short_secret_rejected_without_debug() {
        let dir = temp_dir();
        let secret = strong('s');
        let vars = variables(
            dir.path(),
            &[("SECRET_KEY", &secret), ("JWT_SECRET_KEY", "short")],
        );
        let error = load(&vars).err();
        assert_eq!(
            error.as_ref().map(|e| e.variable.as_str()),
            Some("JWT_SECRET_KEY")
        );

        let debug_vars = variables(
            dir.path(),
            &[
                ("SECRET_KEY", &secret),
                ("JWT_SECRET_KEY", "short"),
                ("DEBUG", "true"),
            ],
        );
        assert!(load(&debug_vars).is_ok());
    }

    #[test]
    fn equal_secrets_rejected() {
        let dir = temp_dir();
        let secret = strong('s');
        let vars = variables(
            dir.path(),
            &[("SECRET_KEY", &secret), ("JWT_SECRET_KEY", &secret)],
        );
        assert_eq!(
            load(&vars).err().map(|e| e.variable).as_deref(),
            Some("JWT_SECRET_KEY")
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        let cases = [
            ("DEBUG", "maybe"),
            ("LISTEN_ADDR", "localhost"),
            ("JWT_ACCESS_TOKEN_LIFETIME", "1h"),
            ("JWT_ACCESS_TOKEN_LIFETIME", "10"),
            ("SCAN_RATE_LIMIT", "0"),
            ("API_RATE_LIMIT", "-5"),
            ("DATABASE_URL", "mysql://db/cyltrack"),
            ("SECURITY_EMAIL", "security@yourdomain.com"),
            ("SECURITY_EMAIL", "not-an-address"),
            ("SECURITY_WEBHOOK_URL", "ftp://hooks.example.com"),
            ("JWT_ALGORITHM", "none"),
            ("LOG_FORMAT", "xml"),
            ("ALLOWED_HOSTS", "http://example.com/path"),
            ("ALLOWED_HOSTS", "a b,,!!"),
            ("SCAN_RAPID_LIMIT", "0"),
            ("SCAN_RAPID_WINDOW", "5"),
            ("SCAN_MAX_SPEED_KMH", "5000"),
            ("SCAN_TOKEN_LIFETIME", "10"),
            ("SCAN_RATE_LIMIT_DRIVER", "lots"),
            ("API_RATE_LIMIT_DRIVER", "10"),
            ("ANONYMOUS_RATE_LIMIT", "0"),
            ("REDIS_URL", "http://127.0.0.1:6379"),
            ("REDIS_KEY_PREFIX", "has space"),
            ("REDIS_URL", "redis://127.0.0.1:notaport"),
            ("TRUSTED_PROXIES", "10.0.0.0/33"),
            ("TRUSTED_PROXIES", "proxy.example.com"),
            ("SECURE_HSTS_SECONDS", "-1"),
            ("SECURE_SSL_REDIRECT", "sometimes"),
            ("MAX_REQUEST_BODY_BYTES", "10"),
            ("MAX_REQUEST_HEADERS", "0"),
            ("MAX_REQUEST_HEAD_BYTES", "100"),
            ("REQUEST_TIMEOUT", "0"),
            ("MAX_CONCURRENT_REQUESTS", "0"),
        ];
        for (name, value) in cases {
            let dir = temp_dir();
            let vars = variables(dir.path(), &[(name, value)]);
            let error = load(&vars).err();
            assert_eq!(
                error.as_ref().map(|e| e.variable.as_str()),
                Some(name),
                "{name}={value}"
            );
            assert!(
                !error.map(|e| e.fix).unwrap_or_default().is_empty(),
                "{name} has a fix"
            );
        }
    }

    #[test]
    fn tls_files_come_in_pairs() {
        let dir = temp_dir();
        let only_key = variables(dir.path(), &[("TLS_KEY_FILE", "/etc/cyltrack/key.pem")]);
        assert_eq!(
            load(&only_key).err().map(|e| e.variable).as_deref(),
            Some("TLS_CERT_FILE")
        );

        let only_cert = variables(dir.path(), &[("TLS_CERT_FILE", "/etc/cyltrack/cert.pem")]);
        assert_eq!(
            load(&only_cert).err().map(|e| e.variable).as_deref(),
            Some("TLS_KEY_FILE")
        );
    }

    #[test]
    fn role_limits_default_per_role() {
        let dir = temp_dir();
        let vars = variables(
            dir.path(),
            &[("SCAN_RATE_LIMIT", "50"), ("API_RATE_LIMIT_ADMIN", "9000")],
        );
        let limits = load(&vars).expect("valid").0.rate_limits;
        assert_eq!(limits.scans.of(Role::Customer), 50);
        assert_eq!(limits.scans.of(Role::Driver), 1000);
        assert_eq!(limits.api.of(Role::Admin), 9000);
        assert_eq!(limits.api.of(Role::Dispatcher), 5000);
        assert_eq!(limits.anonymous, 300);
    }

    #[test]
    fn refresh_must_outlive_access() {
        let dir = temp_dir();
        let vars = variables(
            dir.path(),
            &[
                ("JWT_ACCESS_TOKEN_LIFETIME", "3600"),
                ("JWT_REFRESH_TOKEN_LIFETIME", "3600"),
            ],
        );
        assert_eq!(
            load(&vars).err().map(|e| e.variable).as_deref(),
            Some("JWT_REFRESH_TOKEN_LIFETIME")
        );
    }

    #[test]
    fn reject_mode_never_generates() {
        let dir = temp_dir();
        let vars = variables(dir.path(), &[]);
        let error = load_with(&vars, MissingSecrets::Reject)
            .err()
            .map(|e| e.variable);
        assert_eq!(error.as_deref(), Some("SECRET_KEY"));
        assert!(
            !dir.path().join("secrets.env").exists(),
            "no secrets file may be written"
        );
    }

    #[test]
    fn database_url_selects_backend() {
        let dir = temp_dir();
        let vars = variables(
            dir.path(),
            &[(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/cyltrack",
            )],
        );
        let target = load(&vars).map(|(config, _)| config.database).ok();
        assert!(matches!(target, Some(DatabaseTarget::Postgres { .. })));
        let vars = variables(
            dir.path(),
            &[("DATABASE_URL", "sqlite:///var/lib/cyltrack/depot.db")],
        );
        let target = load(&vars).map(|(config, _)| config.database).ok();
        assert!(
            matches!(target, Some(DatabaseTarget::Sqlite { path }) if path == Path::new("/var/lib/cyltrack/depot.db"))
        );
    }

    #[test]
    fn debug_output_hides_secrets() {
        let dir = temp_dir();
        let secret = strong('s');
        let jwt = strong('j');
        let vars = variables(
            dir.path(),
            &[("SECRET_KEY", &secret), ("JWT_SECRET_KEY", &jwt)],
        );
        let text = load(&vars)
            .map(|(config, _)| format!("{config:?}"))
            .unwrap_or_default();
        assert!(text.contains("listen_addr"));
        assert!(!text.contains(&secret));
        assert!(!text.contains(&jwt));
    }
}
