//! Optional TLS for both listeners (`marsc serve --tls-cert FILE --tls-key FILE`): rustls with
//! the `ring` provider (no OpenSSL, no C toolchain beyond what `ring` builds). HTTP is served by
//! axum-server's rustls acceptor with a config built here; gRPC by tonic's own rustls support
//! from the same PEM files.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate chain and its private key, as PEM text.
#[derive(Clone)]
pub struct Tls {
    /// The certificate chain (leaf first), PEM.
    pub cert_pem: Vec<u8>,
    /// The private key (PKCS#8, PKCS#1 or SEC1), PEM.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.write_str("Tls { .. }")
    }
}

impl Tls {
    /// The rustls server config of the HTTP listener (HTTP/1.1 by ALPN). Errors say which
    /// file is wrong and why.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("--tls-cert is not a PEM certificate chain: {e}"))?;
        if certs.is_empty() {
            return Err("--tls-cert holds no certificate (`-----BEGIN CERTIFICATE-----`)".into());
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| format!("--tls-key holds no usable PEM private key: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| format!("--tls-cert and --tls-key do not make a usable pair: {e}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The gRPC listener's TLS settings.
    pub fn grpc_config(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
            &self.cert_pem,
            &self.key_pem,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_pem_is_a_clear_error_naming_the_flag() {
        let t = Tls {
            cert_pem: b"not a certificate".to_vec(),
            key_pem: Vec::new(),
        };
        let e = t.server_config().expect_err("refused");
        assert!(e.starts_with("--tls-cert holds no certificate"), "{e}");
        let t = Tls {
            cert_pem: b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
            key_pem: b"nothing".to_vec(),
        };
        let e = t.server_config().expect_err("refused");
        assert!(
            e.starts_with("--tls-key holds no usable PEM private key"),
            "{e}"
        );
    }
}
