//! Log output: human-readable text or one JSON object per line.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Filter used when `RUST_LOG` is not set: the service at info, its
/// libraries at warn.
const DEFAULT_FILTER: &str = "info,sqlx=warn,tower_http=warn,hyper=warn";

/// Installs the global subscriber. Calling it twice is harmless, so tests
/// that start several servers can each call it.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Colour codes only help a person at a terminal; in a log file or a
    // pipe they are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    // An error here means a subscriber is already installed, which is fine.
    drop(result);
}
