//! Structured logging: one event per line, with fields, as text or JSON.

use slog::{o, Drain, Logger};

use crate::config::{parse_level, LogFormat};

/// A root logger writing to stderr in the chosen format and level.
pub fn logger(format: LogFormat, level: &str) -> Logger {
    let level = parse_level(level).unwrap_or(slog::Level::Info);
    match format {
        LogFormat::Text => {
            let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
            let drain = slog_term::FullFormat::new(decorator).build().fuse();
            finish(drain, level)
        }
        LogFormat::Json => {
            let drain = slog_json::Json::new(std::io::stderr())
                .add_default_keys()
                .build()
                .fuse();
            finish(drain, level)
        }
    }
}

fn finish<D>(drain: D, level: slog::Level) -> Logger
where
    D: Drain<Ok = (), Err = slog::Never> + Send + 'static,
{
    let drain = slog_async::Async::new(drain)
        .chan_size(8192)
        .overflow_strategy(slog_async::OverflowStrategy::DropAndReport)
        .build()
        .fuse();
    Logger::root(drain.filter_level(level).fuse(), o!())
}
