//! Logs: `tracing` events on stderr, as text or as JSON lines, filtered by `QTASK_LOG`
//! (`info` by default; any `EnvFilter` directive, such as `qtask_engine=debug`).
//!
//! The subscriber is installed first thing, in text, so every command logs the same
//! way; `qtask serve` switches it to its configured format once it has read its
//! configuration (`--log-format`, `QTASK_LOG_FORMAT`, `log_format` in the file).

use std::io::IsTerminal;
use std::sync::OnceLock;
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Layer, Registry};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people: `time LEVEL span{fields}: target: message fields`.
    #[default]
    Text,
    /// For log pipelines: one JSON object per line, the event's fields at the top level
    /// and its span's (`action`, `requestId`) under `span`.
    Json,
}

type Filtered = Layered<EnvFilter, Registry>;
type Formatter = Box<dyn Layer<Filtered> + Send + Sync>;

static FORMAT: OnceLock<reload::Handle<Formatter, Filtered>> = OnceLock::new();

/// Installs the process's subscriber: text on stderr, filtered by `QTASK_LOG`.
pub fn init() {
    let filter = EnvFilter::try_from_env("QTASK_LOG").unwrap_or_else(|_| "info".into());
    let (formatter, handle) = reload::Layer::new(formatter(LogFormat::Text));
    if tracing_subscriber::registry()
        .with(filter)
        .with(formatter)
        .try_init()
        .is_ok()
    {
        let _ = FORMAT.set(handle);
    }
}

/// Switches the format of the subscriber [`init`] installed. Call it before any span
/// is opened: a span keeps its fields in the format it was opened with.
pub fn set_format(format: LogFormat) {
    if let Some(handle) = FORMAT.get() {
        if let Err(error) = handle.reload(formatter(format)) {
            tracing::warn!(%error, ?format, "cannot switch the log format");
        }
    }
}

fn formatter(format: LogFormat) -> Formatter {
    let stderr = fmt::layer().with_writer(std::io::stderr);
    match format {
        // Colours only for a person at a terminal, not in a journal or a file.
        LogFormat::Text => stderr.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => stderr
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    }
}
