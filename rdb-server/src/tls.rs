//! TLS on the client and peer ports (rustls, through tonic), from `[tls]` and `[peer_tls]`.
//!
//! The client port takes the node's certificate, and with `client_cert_auth` accepts only
//! clients whose certificate `ca_file` signed. The peer port is always mutual: a node presents
//! its certificate when it connects to a peer and accepts only peers signed by `ca_file`, so a
//! node without such a certificate can neither join nor send Raft messages.

use std::path::Path;
use std::sync::OnceLock;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::{NodeId, TlsSettings};
use crate::ServerError;

fn read(path: &Path, what: &str) -> Result<Vec<u8>, ServerError> {
    std::fs::read(path).map_err(|e| ServerError::Tls(format!("{what} {}: {e}", path.display())))
}

fn identity(t: &TlsSettings) -> Result<Identity, ServerError> {
    Ok(Identity::from_pem(
        read(&t.cert_file, "cert_file")?,
        read(&t.key_file, "key_file")?,
    ))
}

/// The server side of a port: `require_client` asks for a client certificate signed by the CA.
pub fn server_config(
    t: &TlsSettings,
    id: NodeId,
    require_client: bool,
) -> Result<ServerTlsConfig, ServerError> {
    let t = t.for_node(id);
    let mut cfg = ServerTlsConfig::new().identity(identity(&t)?);
    if require_client {
        let ca = t.ca_file.as_ref().ok_or_else(|| {
            ServerError::Tls("client certificates are required but no ca_file is set".into())
        })?;
        cfg = cfg.client_ca_root(Certificate::from_pem(read(ca, "ca_file")?));
    }
    Ok(cfg)
}

/// The TLS of server `id`'s client port (`client`) and peer port (`peer`, which also sets how
/// this process connects to its peers, see [`set_peer_client`]); `None` for plaintext.
pub fn port_configs(
    client: Option<&TlsSettings>,
    peer: Option<&TlsSettings>,
    id: NodeId,
) -> Result<(Option<ServerTlsConfig>, Option<ServerTlsConfig>), ServerError> {
    let client = match client {
        Some(t) => Some(server_config(t, id, t.client_cert_auth)?),
        None => None,
    };
    let peer = match peer {
        Some(t) => {
            set_peer_client(peer_client_config(t, id)?);
            Some(server_config(t, id, true)?)
        }
        None => None,
    };
    Ok((client, peer))
}

/// The client side of the peer port: this node's certificate, and the CA its peers must have.
pub fn peer_client_config(t: &TlsSettings, id: NodeId) -> Result<ClientTlsConfig, ServerError> {
    let t = t.for_node(id);
    let ca = t
        .ca_file
        .as_ref()
        .ok_or_else(|| ServerError::Tls("[peer_tls] needs ca_file".into()))?;
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca, "ca_file")?))
        .identity(identity(&t)?))
}

static PEER_CLIENT: OnceLock<ClientTlsConfig> = OnceLock::new();

/// Sets how this process connects to its peers (once: one node per process).
pub fn set_peer_client(cfg: ClientTlsConfig) {
    let _ = PEER_CLIENT.set(cfg);
}

/// How to connect to peers: TLS settings, or None for plaintext.
pub fn peer_client() -> Option<&'static ClientTlsConfig> {
    PEER_CLIENT.get()
}
