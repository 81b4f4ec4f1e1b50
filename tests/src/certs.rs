//! Test certificates, made at test time with rcgen: a CA, and certificates it signs for nodes
//! and clients (valid for 127.0.0.1 and localhost).

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};

/// A certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    /// A fresh self-signed CA named `name`.
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    /// The CA certificate (PEM).
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA certificate to `path`.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.pem()).expect("write CA");
    }

    /// A certificate for `name` signed by this CA, valid for 127.0.0.1 and localhost, as
    /// (certificate PEM, key PEM).
    pub fn issue(&self, name: &str) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a certificate for `name` to `dir/{stem}.pem` and its key to `dir/{stem}.key`.
    pub fn issue_to(&self, name: &str, dir: &Path, stem: &str) {
        let (cert, key) = self.issue(name);
        std::fs::write(dir.join(format!("{stem}.pem")), cert).expect("write cert");
        std::fs::write(dir.join(format!("{stem}.key")), key).expect("write key");
    }
}
