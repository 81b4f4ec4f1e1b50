//! Why a command reached no node, when the reason is the transport: a plaintext client against
//! a TLS server (or the reverse) fails with errors that name neither (`h2 protocol error`,
//! `operation was canceled`, `received corrupt message`). After a command failed that way, the
//! CLI asks an endpoint itself which one it speaks and says so in its one-line error.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::OnceLock;
use std::time::Duration;

/// How long the probe of one endpoint may take for each step (connect, write, read).
const PROBE: Duration = Duration::from_millis(300);

/// The endpoints of this run and whether it speaks TLS; set once by `run`.
static TARGETS: OnceLock<(Vec<String>, bool)> = OnceLock::new();

/// Records the endpoints the command talks to and whether it uses TLS.
pub fn set_targets(endpoints: Vec<String>, tls: bool) {
    let _ = TARGETS.set((endpoints, tls));
}

/// What an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tls,
    Plaintext,
}

/// The hint for a command that reached no node, when an endpoint speaks the other transport
/// than the CLI: which one it is and what to give. Probes at most three endpoints.
pub fn transport_hint() -> Option<String> {
    let (endpoints, tls) = TARGETS.get()?;
    endpoints
        .iter()
        .take(3)
        .find_map(|addr| match (speaks(addr)?, *tls) {
            (Transport::Tls, false) => Some(format!(
                "{addr} speaks TLS: give the CA that signs its certificate with --cacert"
            )),
            (Transport::Plaintext, true) => {
                Some(format!("{addr} speaks plaintext: leave out --cacert"))
            }
            _ => None,
        })
}

/// Which transport the server at `addr` answers with: the first five bytes of the HTTP/2
/// preface are a TLS record header of an unknown type to a TLS server, which answers with an
/// alert record (`0x15 0x03 ..`); a plaintext HTTP/2 server sends its SETTINGS frame (type 4).
fn speaks(addr: &str) -> Option<Transport> {
    let sock = addr.to_socket_addrs().ok()?.next()?;
    let mut s = TcpStream::connect_timeout(&sock, PROBE).ok()?;
    s.set_read_timeout(Some(PROBE)).ok()?;
    s.set_write_timeout(Some(PROBE)).ok()?;
    s.write_all(b"PRI *").ok()?;
    let mut head = [0u8; 5];
    let mut got = 0;
    while got < head.len() {
        match s.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    classify(&head[..got])
}

/// The transport the first bytes a server sent belong to, if they tell.
fn classify(head: &[u8]) -> Option<Transport> {
    match head {
        [0x15 | 0x16, 0x03, ..] => Some(Transport::Tls),
        [_, _, _, 0x04, ..] => Some(Transport::Plaintext),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_tell_tls_from_plaintext_http2() {
        // A TLS alert record; a TLS handshake record; an HTTP/2 SETTINGS frame header.
        assert_eq!(
            classify(&[0x15, 0x03, 0x03, 0x00, 0x02]),
            Some(Transport::Tls)
        );
        assert_eq!(
            classify(&[0x16, 0x03, 0x01, 0x00, 0x2a]),
            Some(Transport::Tls)
        );
        assert_eq!(
            classify(&[0x00, 0x00, 0x12, 0x04, 0x00]),
            Some(Transport::Plaintext)
        );
        assert_eq!(classify(&[]), None);
        assert_eq!(classify(b"HTTP/"), None);
    }
}
