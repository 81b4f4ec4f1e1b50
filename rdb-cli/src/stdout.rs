//! Standard output that ends quietly when its reader goes away.
//!
//! `rdb-cli get KEY | head` closes the pipe before the CLI is done. Unix tools die of SIGPIPE
//! there; the CLI cannot take SIGPIPE's default action, because the same signal would then kill
//! it when a server resets a connection it writes to (a plaintext client against a TLS node),
//! which must be an "unavailable" error instead. So SIGPIPE stays ignored, as Rust sets it, and
//! every write to stdout goes through here: a broken pipe exits 0 without a word, any other
//! failure to write exits 1 with the cause.

use std::fmt::Arguments;
use std::io::{ErrorKind, Write};

/// Writes `args` to stdout and flushes; never returns if stdout is gone.
pub fn write(args: Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        fail(&e)
    }
}

/// Writes `bytes` to stdout as they are (`get --raw`) and flushes; never returns if stdout is gone.
pub fn write_bytes(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        fail(&e)
    }
}

/// Ends the process after a failed write to stdout.
fn fail(e: &std::io::Error) -> ! {
    if e.kind() == ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("rdb-cli: cannot write to standard output: {e}");
    std::process::exit(crate::exit::FAILURE.into())
}
