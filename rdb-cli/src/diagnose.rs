//! Why a command reached no node, when the reason is the client's TLS settings: a plaintext
//! client against a TLS server (or the reverse) fails with errors that name neither (`h2
//! protocol error`, `operation was canceled`, `received corrupt message`), and a TLS client
//! whose certificate is missing or refused, or whose CA did not sign the server's, gets
//! `transport error`. Those look like an unavailable cluster, which scripts retry. After a
//! command failed that way, the CLI asks an endpoint itself: which transport it speaks, and
//! over TLS how a handshake with the CLI's own settings ends. A mismatch is a configuration
//! error with its own exit code, named in the one-line error.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::OnceLock;
use std::time::Duration;

/// How long the probe of one endpoint may take for each step (connect, write, read).
const PROBE: Duration = Duration::from_millis(300);

/// How long a TLS handshake probe may take for each read or write.
const HANDSHAKE: Duration = Duration::from_secs(1);

/// The endpoints of this run and its TLS settings (None: plaintext); set once by `run`.
static TARGETS: OnceLock<(Vec<String>, Option<rdb_client::TlsOptions>)> = OnceLock::new();

/// Records the endpoints the command talks to and its TLS settings.
pub fn set_targets(endpoints: Vec<String>, tls: Option<rdb_client::TlsOptions>) {
    let _ = TARGETS.set((endpoints, tls));
}

/// What an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tls,
    Plaintext,
}

/// The cause of a command that reached no node, when it is the client's TLS settings: an
/// endpoint speaks the other transport than the CLI, or a TLS handshake with the CLI's
/// settings fails for a certificate. Says which and what to give. Probes at most three
/// endpoints.
pub fn tls_mistake() -> Option<String> {
    let (endpoints, tls) = TARGETS.get()?;
    endpoints
        .iter()
        .take(3)
        .find_map(|addr| match (speaks(addr)?, tls) {
            (Transport::Tls, None) => Some(format!(
                "{addr} speaks TLS: give the CA that signs its certificate with --cacert"
            )),
            (Transport::Plaintext, Some(_)) => {
                Some(format!("{addr} speaks plaintext: leave out --cacert"))
            }
            (Transport::Tls, Some(tls)) => handshake(addr, tls).err(),
            (Transport::Plaintext, None) => None,
        })
}

/// A TLS handshake with `addr` with the CLI's settings, then the first bytes of HTTP/2 (a
/// server that refuses the client's certificate says so after the handshake, in TLS 1.3).
/// Err: why the node and these settings do not fit; Ok when they do, or when it cannot tell.
fn handshake(addr: &str, tls: &rdb_client::TlsOptions) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&tls.ca_pem).flatten() {
        let _ = roots.add(cert);
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|_| ())
        .ok();
    let Some(builder) = builder.map(|b| b.with_root_certificates(roots)) else {
        return Ok(());
    };
    let config = match &tls.identity {
        Some((cert, key)) => {
            let certs: Vec<_> = CertificateDer::pem_slice_iter(cert).flatten().collect();
            match PrivateKeyDer::from_pem_slice(key) {
                Ok(key) => builder.with_client_auth_cert(certs, key).ok(),
                Err(_) => None,
            }
        }
        None => Some(builder.with_no_client_auth()),
    };
    let Some(mut config) = config else {
        return Ok(());
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let Ok(name) = ServerName::try_from(host.to_string()) else {
        return Ok(());
    };
    let Ok(mut conn) = rustls::ClientConnection::new(std::sync::Arc::new(config), name) else {
        return Ok(());
    };
    let Some(sock) = addr.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        return Ok(());
    };
    let Ok(mut tcp) = TcpStream::connect_timeout(&sock, PROBE) else {
        return Ok(());
    };
    let _ = tcp.set_read_timeout(Some(HANDSHAKE));
    let _ = tcp.set_write_timeout(Some(HANDSHAKE));
    let mut stream = rustls::Stream::new(&mut conn, &mut tcp);
    let mut first = [0u8; 9];
    let outcome = stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .and_then(|()| stream.flush())
        .and_then(|()| stream.read(&mut first).map(drop));
    match outcome {
        Ok(()) => Ok(()),
        Err(e) => match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(e) => match certificate_mistake(e, addr, host, tls.identity.is_some()) {
                Some(why) => Err(why),
                None => Ok(()),
            },
            None => Ok(()),
        },
    }
}

/// What a failed handshake says about the client's settings, if it is about certificates.
fn certificate_mistake(
    e: &rustls::Error,
    addr: &str,
    host: &str,
    has_cert: bool,
) -> Option<String> {
    use rustls::{AlertDescription as Alert, CertificateError as Cert};
    Some(match e {
        rustls::Error::InvalidCertificate(Cert::UnknownIssuer | Cert::BadSignature) => {
            format!("{addr}'s certificate is not signed by the CA given with --cacert (unknown CA)")
        }
        rustls::Error::InvalidCertificate(
            Cert::NotValidForName | Cert::NotValidForNameContext { .. },
        ) => format!(
            "{addr}'s certificate does not name {host}: use an address its certificate names"
        ),
        rustls::Error::InvalidCertificate(Cert::Expired | Cert::ExpiredContext { .. }) => {
            format!("{addr}'s certificate has expired")
        }
        rustls::Error::AlertReceived(Alert::CertificateRequired) => format!(
            "{addr} requires a client certificate: give --cert and --key (signed by a CA the \
             node trusts)"
        ),
        rustls::Error::AlertReceived(
            Alert::BadCertificate | Alert::UnknownCA | Alert::CertificateUnknown,
        ) if has_cert => format!(
            "{addr} refused this client's certificate: it is not signed by a CA the node \
             trusts (unknown CA)"
        ),
        rustls::Error::AlertReceived(Alert::BadCertificate) => {
            format!("{addr} requires a client certificate: give --cert and --key")
        }
        _ => return None,
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

    #[test]
    fn certificate_failures_name_the_setting_to_change() {
        use rustls::{AlertDescription as Alert, CertificateError as Cert, Error as E};
        let says = |e: E, has_cert: bool| certificate_mistake(&e, "h:1", "h", has_cert);
        let unknown_ca = says(E::InvalidCertificate(Cert::UnknownIssuer), true).unwrap();
        assert!(unknown_ca.contains("not signed by the CA given with --cacert"));
        let name = says(E::InvalidCertificate(Cert::NotValidForName), true).unwrap();
        assert!(name.contains("does not name h"), "{name}");
        let missing = says(E::AlertReceived(Alert::CertificateRequired), false).unwrap();
        assert!(missing.contains("requires a client certificate: give --cert and --key"));
        let refused = says(E::AlertReceived(Alert::UnknownCA), true).unwrap();
        assert!(
            refused.contains("refused this client's certificate"),
            "{refused}"
        );
        // Not about the client's settings: no verdict.
        assert_eq!(says(E::AlertReceived(Alert::InternalError), true), None);
        assert_eq!(says(E::AlertReceived(Alert::UnknownCA), false), None);
    }
}
