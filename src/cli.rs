//! The command line: `serve`, `migrate`, `user create`, `demo`, `audit verify`,
//! `db grants` and `check --deploy`.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::app;
use crate::audit::{self, Identifier};
use crate::config::{self, Config};
use crate::deploy_check;
use crate::domain::Role;
use crate::domain::user::NewUser;
use crate::domain::value::{Email, FullName, Password, Phone, Username};
use crate::telemetry;

/// Tracks LPG gas cylinders and catches counterfeit and cloned labels.
///
/// Configuration comes from environment variables and an optional .env file
/// in the working directory; see the README for the full list.
#[derive(Debug, Parser)]
#[command(name = "cyltrack", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the HTTP server on LISTEN_ADDR (127.0.0.1:8000 by default).
    ///
    /// Applies pending migrations first. SIGINT or SIGTERM stops it after
    /// in-flight requests finish.
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage user accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Start a demo server with a sample fleet on a fresh SQLite database.
    ///
    /// Creates depots around Nairobi and Mombasa, staff, drivers, customers
    /// and a few hundred cylinders, then prints the URL and the logins.
    Demo(DemoArgs),
    /// Check the tamper-evident history.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print database setup for operators.
    #[command(subcommand)]
    Db(DbCommand),
    /// Check the configuration before going live.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// Run the production checklist: DEBUG, secrets, ALLOWED_HOSTS, HTTPS,
    /// HSTS, the database and its role, REDIS_URL and security alerts.
    ///
    /// Prints one PASS or FAIL line per item, with the fix for each
    /// failure, and exits 1 when any item fails. It never generates a
    /// secret and never prints one. On PostgreSQL it connects with
    /// DATABASE_URL to read the role's privileges.
    #[arg(long, required = true)]
    deploy: bool,
    /// Number of instances that will share the database. Above 1, the
    /// database must be PostgreSQL and REDIS_URL must be set.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    instances: u32,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check every cylinder's history chain and scans against SECRET_KEY.
    ///
    /// Recomputes each history entry's HMAC, checks that no entry is
    /// missing or out of order, that the last one matches the chain head on
    /// the cylinder, and that each scan matches its SCANNED entry. Prints a
    /// summary and exits 0 when everything is intact; otherwise prints
    /// `BROKEN <serial> (<id>): <problem>` for each broken cylinder and
    /// exits 1. It never generates a secret: SECRET_KEY, or the secrets file,
    /// must hold the key the service runs with. Scans of unknown codes have
    /// no cylinder and no chain, so only the append-only triggers protect
    /// them. Pending migrations are applied first, which needs the owner
    /// role; with none pending, the service's role is enough.
    Verify,
}

#[derive(Debug, Subcommand)]
enum DbCommand {
    /// Print the PostgreSQL statements that set up a restricted service role.
    ///
    /// The role gets USAGE on the schema and SELECT, INSERT, UPDATE and
    /// DELETE on the ordinary tables. On cylinder_history and cylinder_scans
    /// it gets only SELECT and INSERT, with UPDATE, DELETE and TRUNCATE
    /// revoked. On _sqlx_migrations it gets SELECT. The role must already
    /// exist. Apply the
    /// output as the owner of the tables after `cyltrack migrate`:
    /// `cyltrack db grants --role cyltrack_app | psql -v ON_ERROR_STOP=1 "$OWNER_DATABASE_URL"`
    Grants(GrantsArgs),
}

#[derive(Debug, Args)]
struct GrantsArgs {
    /// The service role: letters, digits and underscores, not starting with
    /// a digit, at most 63 bytes. Used exactly as written, case included.
    #[arg(long, value_name = "NAME", value_parser = parse_role_name)]
    role: Identifier,
    /// The schema that contains cyltrack's tables.
    #[arg(long, value_name = "NAME", default_value = "public", value_parser = parse_schema_name)]
    schema: Identifier,
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create an account, for example the first admin.
    ///
    /// The password is read from the first line of standard input:
    /// `printf '%s\n' "$PASSWORD" | cyltrack user create --username admin --role admin --password-stdin`
    Create(CreateUserArgs),
}

#[derive(Debug, Args)]
struct CreateUserArgs {
    /// Login name: 3 to 150 characters of a-z, 0-9 and . _ - @ +.
    #[arg(long)]
    username: String,
    /// One of customer, driver, dispatcher, admin.
    #[arg(long, value_parser = parse_role)]
    role: Role,
    /// Display name.
    #[arg(long, default_value = "")]
    full_name: String,
    /// E-mail address.
    #[arg(long)]
    email: Option<String>,
    /// Phone number, such as +254712345678 or 0712345678.
    #[arg(long)]
    phone: Option<String>,
    /// Read the password from the first line of standard input. Required,
    /// so that the password never appears in the process list or history.
    #[arg(long, required = true)]
    password_stdin: bool,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Folder for the demo database and secrets. It must not already hold a
    /// cyltrack.db. By default a new temporary folder is created and kept.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Number of cylinders in the demo fleet.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    cylinders: u32,
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text)
        .ok_or_else(|| format!("'{text}' is not a role; use customer, driver, dispatcher or admin"))
}

fn parse_role_name(text: &str) -> Result<Identifier, String> {
    Identifier::parse_role(text).map_err(|error| format!("the role name {error}"))
}

fn parse_schema_name(text: &str) -> Result<Identifier, String> {
    Identifier::parse(text).map_err(|error| format!("the schema name {error}"))
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve => serve().await,
        Command::Migrate => migrate().await,
        Command::User(UserCommand::Create(args)) => create_user(args).await,
        Command::Demo(args) => crate::demo::run(args.dir, args.listen, args.cylinders).await,
        Command::Audit(AuditCommand::Verify) => verify_audit().await,
        Command::Db(DbCommand::Grants(args)) => {
            print!("{}", audit::grant_statements(&args.role, &args.schema));
            Ok(())
        }
        Command::Check(args) => check_deploy(args).await,
    }
}

async fn check_deploy(args: CheckArgs) -> anyhow::Result<()> {
    let variables = config::process_variables()?;
    let findings = deploy_check::run(&variables, args.instances).await;

    let mut out = std::io::stdout().lock();
    for finding in &findings {
        if writeln!(out, "{finding}").is_err() {
            break;
        }
    }
    let failed = findings.iter().filter(|finding| !finding.passed()).count();
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} checks failed; see the FAIL lines above",
            findings.len()
        );
    }
    Ok(())
}

/// Loads the configuration, installs logging and reports generated secrets.
pub fn load_config(variables: &config::Variables) -> anyhow::Result<Config> {
    let (config, generated) = config::load(variables)?;
    telemetry::init(config.log_format);
    if !generated.is_empty() {
        tracing::warn!(
            secrets = ?generated,
            file = %variables.get("SECRETS_FILE").map(String::as_str).unwrap_or("cyltrack-secrets.env"),
            "generated missing secrets and saved them to the secrets file (mode 0600); \
             every instance must share them, so set them explicitly when you run more than one"
        );
    }
    if config.debug {
        tracing::warn!("DEBUG is on: weak secrets are accepted; never run production this way");
    }
    Ok(config)
}

async fn serve() -> anyhow::Result<()> {
    let config = load_config(&config::process_variables()?)?;
    let store = app::open_store(&config).await?;
    let listen_addr = config.listen_addr;
    let state = app::build_state(config, store).await?;
    let (listener, _) = app::bind(listen_addr)
        .await
        .context("set LISTEN_ADDR to a free address")?;
    app::serve(state, listener, app::shutdown_signal()).await
}

async fn migrate() -> anyhow::Result<()> {
    let config = load_config(&config::process_variables()?)?;
    let store = app::open_store(&config).await?;
    store.close().await;
    println!("migrations applied");
    Ok(())
}

async fn verify_audit() -> anyhow::Result<()> {
    // A new key would make every chain look broken, so none is generated.
    let (config, _) = config::load_with(
        &config::process_variables()?,
        config::MissingSecrets::Reject,
    )?;
    telemetry::init(config.log_format);
    let store = app::open_store(&config).await?;
    let verified = audit::verify(store.as_ref(), &app::chain_key(&config)).await;
    store.close().await;
    let report = verified.context("cannot read the history")?;

    // Output may go to a pipe that closes early, such as `| head`; that is
    // not an error worth a panic.
    let mut out = std::io::stdout().lock();
    for broken in &report.broken {
        let line = format!(
            "BROKEN {} ({}): {}",
            broken.serial_number, broken.cylinder_id, broken.problem
        );
        if writeln!(out, "{line}").is_err() {
            break;
        }
    }
    let every_chain_at_first_entry = report.broken.len() as u64 == report.cylinders_checked
        && report.broken.iter().all(|broken| {
            matches!(
                broken.problem,
                crate::domain::audit::ChainBreak::Changed { position: 1 }
            )
        });
    if !report.is_intact() && every_chain_at_first_entry {
        anyhow::bail!(
            "every cylinder's history fails at its first entry, which means SECRET_KEY is almost certainly \
             not the key the history was written with; set SECRET_KEY or SECRETS_FILE to the service's"
        );
    }
    if !report.is_intact() {
        anyhow::bail!(
            "the history of {} of {} cylinders is broken; see the BROKEN lines above",
            report.broken.len(),
            report.cylinders_checked
        );
    }
    let _ = writeln!(
        out,
        "history intact: {} cylinders, {} history entries and {} scans checked",
        report.cylinders_checked, report.entries_checked, report.scans_checked
    );
    Ok(())
}

async fn create_user(args: CreateUserArgs) -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let plain = line.trim_end_matches(['\r', '\n']).to_string();

    let new_user = NewUser {
        username: Username::parse("--username", &args.username)?,
        full_name: FullName::parse("--full-name", &args.full_name)?,
        email: args
            .email
            .as_deref()
            .map(|email| Email::parse("--email", email))
            .transpose()?,
        phone: args
            .phone
            .as_deref()
            .map(|phone| Phone::parse("--phone", phone))
            .transpose()?,
        role: args.role,
        password: Password::parse("the password on standard input", plain)?,
    };

    let config = load_config(&config::process_variables()?)?;
    let store = app::open_store(&config).await?;
    let created = crate::auth::create_account(store.as_ref(), new_user).await;
    store.close().await;
    let user = created?;
    println!("created {} {} ({})", user.role, user.username, user.id);
    Ok(())
}
