//! Logging on stderr: the shape of each line (`--log-format text|json`) and the filter
//! (`RUST_LOG`, default `info`).
//!
//! Text is for a person at a terminal; JSON (one object per line) is for a log collector. With
//! no `--log-format`, stderr being a terminal picks text, anything else JSON.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The target of the request log: one debug event per HTTP request (see [`crate::api`]).
/// `RUST_LOG=info,policyd::request=debug` turns on that log alone.
pub const REQUEST_TARGET: &str = "policyd::request";

/// How log events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `time LEVEL target: message key=value ...`, one event a line.
    Text,
    /// One JSON object a line: `timestamp`, `level`, `target`, `message`, and the event's
    /// fields at the top level.
    Json,
}

impl LogFormat {
    /// The format when none was asked for: text when stderr is a terminal, else JSON.
    pub fn detect() -> LogFormat {
        if std::io::stderr().is_terminal() {
            LogFormat::Text
        } else {
            LogFormat::Json
        }
    }
}

/// Installs the process's logger: `format` (else [`LogFormat::detect`]), filtered by
/// `RUST_LOG` (default `info`), on stderr. Call once, first thing.
pub fn init(format: Option<LogFormat>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format.unwrap_or_else(LogFormat::detect) {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}
