//! What `ota` and `ota-agent` share on their terminal side: the log set-up and the one-line
//! error report.
//!
//! - Logs go to stderr. [`LOG_VAR`] (`OTA_LOG`) sets the filter (`info`,
//!   `warn,ota_server=debug`, ...); [`LOG_VAR_FALLBACK`] (`RUST_LOG`) is read when it is unset
//!   or empty; an unparsable value falls back to the binary's default.
//! - Colour only when stderr is a terminal and `NO_COLOR` is unset or empty (a log redirected
//!   to a file has no escape codes).
//! - An error is printed as its chain on one line, `outer: cause: root`, without a cause whose
//!   text an outer message already includes (an error that puts its source in its own message
//!   is not repeated).

use std::error::Error;
use std::io::IsTerminal as _;

use tracing_subscriber::filter::Targets;

/// The variable both binaries read their log filter from.
pub const LOG_VAR: &str = "OTA_LOG";
/// Read when [`LOG_VAR`] is unset or empty.
pub const LOG_VAR_FALLBACK: &str = "RUST_LOG";

/// The log filter of `vars` (a lookup of environment variables), else `default`.
pub fn log_filter(vars: impl Fn(&str) -> Option<String>, default: Targets) -> Targets {
    [LOG_VAR, LOG_VAR_FALLBACK]
        .iter()
        .filter_map(|name| vars(name))
        .find(|v| !v.trim().is_empty())
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or(default)
}

/// Whether to colour output on a stream that is (`terminal`) a terminal, given the value of
/// `NO_COLOR`.
pub fn use_colour(terminal: bool, no_color: Option<&str>) -> bool {
    terminal && no_color.is_none_or(str::is_empty)
}

/// Installs the stderr log subscriber (see the [module documentation](self)); a second call
/// does nothing.
pub fn init_logs(default: Targets) {
    use tracing_subscriber::prelude::*;
    let filter = log_filter(|name| std::env::var(name).ok(), default);
    let ansi = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var("NO_COLOR").ok().as_deref(),
    );
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init();
}

/// `err` and its causes on one line, `outer: cause: root`, skipping a cause whose text is
/// already part of the line.
pub fn error_line(err: &(dyn Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !line.contains(&part) {
            line.push_str(": ");
            line.push_str(&part);
        }
        source = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read /x: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("loading the configuration")]
    struct Outer(#[source] Repeats);

    #[test]
    fn issue12_error_chains_name_each_cause_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let text = io.to_string();
        let line = error_line(&Outer(Repeats(io)));
        assert_eq!(
            line,
            format!("loading the configuration: cannot read /x: {text}")
        );
        assert_eq!(line.matches(&text).count(), 1, "{line}");
    }

    #[test]
    fn issue12_one_log_variable_with_a_fallback_and_colour_only_on_a_terminal() {
        let default = Targets::new().with_default(tracing::Level::ERROR);
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let level = |t: Targets| t.default_level();
        let debug = Some(tracing::level_filters::LevelFilter::DEBUG);
        let warn = Some(tracing::level_filters::LevelFilter::WARN);
        assert_eq!(
            level(log_filter(env(&[("OTA_LOG", "debug")]), default.clone())),
            debug
        );
        assert_eq!(
            level(log_filter(env(&[("RUST_LOG", "warn")]), default.clone())),
            warn
        );
        assert_eq!(
            level(log_filter(
                env(&[("OTA_LOG", "debug"), ("RUST_LOG", "warn")]),
                default.clone()
            )),
            debug
        );
        assert_eq!(
            level(log_filter(
                env(&[("OTA_LOG", " "), ("RUST_LOG", "warn")]),
                default.clone()
            )),
            warn
        );
        assert_eq!(
            level(log_filter(env(&[]), default.clone())),
            Some(tracing::level_filters::LevelFilter::ERROR)
        );
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some("")));
        assert!(!use_colour(true, Some("1")));
        assert!(!use_colour(false, None));
    }
}
