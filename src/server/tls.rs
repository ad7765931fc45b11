//! Loading the certificate chain and private key for serving HTTPS with
//! rustls. Errors name the variable, the path and the problem, and never
//! quote the contents of the key file.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::ServerConfig;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;

/// The only protocol offered through ALPN, since the server speaks HTTP/1.1
/// alone.
const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// Builds the rustls server configuration from the PEM files: TLS 1.2 and
/// 1.3 only, with the `ring` crypto provider.
pub fn server_config(files: &TlsFiles) -> anyhow::Result<Arc<ServerConfig>> {
    let certificates = read_certificates(&files.cert)?;
    let key = read_private_key(&files.key)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("the ring crypto provider does not support TLS 1.2 and 1.3")?
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .map_err(|error| {
            anyhow::anyhow!(
                "TLS_KEY_FILE {} cannot be used with the certificate in TLS_CERT_FILE {}: {error}. \
                 Fix: give the private key that belongs to the first certificate of the chain",
                files.key.display(),
                files.cert.display(),
            )
        })?;
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    Ok(Arc::new(config))
}

/// Reads the certificate chain, leaf first, from a PEM file.
fn read_certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let fail = |problem: String| {
        anyhow::anyhow!(
            "TLS_CERT_FILE {}: {problem}. Fix: point it at a PEM file with the server's \
             certificate first and any intermediate certificates after it",
            path.display()
        )
    };

    let contents = std::fs::read(path).map_err(|error| fail(format!("cannot be read: {error}")))?;
    let certificates = CertificateDer::pem_slice_iter(&contents)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| fail(format!("is not a valid PEM file: {error}")))?;
    if certificates.is_empty() {
        return Err(fail("contains no CERTIFICATE block".to_string()));
    }
    Ok(certificates)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) from a PEM file.
fn read_private_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let fail = |problem: &str| {
        anyhow::anyhow!(
            "TLS_KEY_FILE {}: {problem}. Fix: point it at the unencrypted PEM private key \
             of the certificate in TLS_CERT_FILE",
            path.display()
        )
    };

    let contents =
        std::fs::read(path).map_err(|error| fail(&format!("cannot be read: {error}")))?;
    // The PEM parser's error messages may quote a line of the file, which
    // would be key material here, so they are replaced by a fixed text.
    PrivateKeyDer::from_pem_slice(&contents).map_err(|error| match error {
        pem::Error::NoItemsFound => {
            fail("contains no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block")
        }
        _ => fail("is not a valid PEM file"),
    })
}
