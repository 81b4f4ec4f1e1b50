//! Structured logging: one event per line, with fields, as text or JSON.

use std::sync::Mutex;

use slog::{crit, o, Drain, Logger};

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

/// Joins the async log writer; dropping it writes out everything logged before.
static GUARD: Mutex<Option<slog_async::AsyncGuard>> = Mutex::new(None);
/// The root logger, for the panic hook.
static ROOT: Mutex<Option<Logger>> = Mutex::new(None);

fn finish<D>(drain: D, level: slog::Level) -> Logger
where
    D: Drain<Ok = (), Err = slog::Never> + Send + 'static,
{
    let (drain, guard) = slog_async::Async::new(drain)
        .chan_size(8192)
        .overflow_strategy(slog_async::OverflowStrategy::DropAndReport)
        .build_with_guard();
    let logger = Logger::root(drain.fuse().filter_level(level).fuse(), o!());
    *GUARD.lock().unwrap_or_else(|p| p.into_inner()) = Some(guard);
    *ROOT.lock().unwrap_or_else(|p| p.into_inner()) = Some(logger.clone());
    logger
}

/// Writes out every log line queued so far. Later lines are lost: call it on the way out.
pub fn flush() {
    ROOT.lock().unwrap_or_else(|p| p.into_inner()).take();
    let guard = GUARD.lock().unwrap_or_else(|p| p.into_inner()).take();
    drop(guard);
}

/// Ends the process with exit code 70 after writing out the logs, printing `cause` as one line.
/// For a node that cannot go on (its storage failed): it must not linger half alive.
///
/// It skips exit handlers and static destructors (`_exit`): RocksDB's can wait for its own
/// background threads, which may be stuck on the very failure that stops the node, and
/// everything acknowledged is already synced.
pub fn fatal_exit(cause: &str) -> ! {
    exit_now(70, cause)
}

/// Ends the process at once with `code` after writing out the logs and printing `NAME: cause`
/// as one line, skipping exit handlers and static destructors (see [`fatal_exit`]).
pub fn exit_now(code: i32, cause: &str) -> ! {
    flush();
    eprintln!("{}: {cause}", crate::binary::name());
    // SAFETY: `_exit` only ends the process; nothing of this process runs after it.
    unsafe { libc::_exit(code) }
}

/// Makes a panic on any thread end the process: a node whose Raft thread (or any other) died
/// must not keep serving stale reads from the threads that remain. The panic is logged, the
/// logs are written out, and the process aborts (non-zero exit, core dump where enabled).
pub fn install_panic_hook() {
    let print = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        print(info);
        let root = ROOT.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(log) = root {
            let thread = std::thread::current();
            crit!(log, "panic, stopping the node"; "thread" => thread.name().unwrap_or("?"),
                "cause" => %info);
        }
        flush();
        eprintln!(
            "{}: fatal: a thread panicked; the process stops",
            crate::binary::name()
        );
        std::process::abort();
    }));
}
