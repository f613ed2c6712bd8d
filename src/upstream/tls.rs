//! TLS to the upstream.
//!
//! A URL with `sslmode=require` connects over TLS, and the server's certificate must be valid
//! for the URL's host and chain to a root the system trusts or to `--upstream-ca` (a PEM
//! file). Unlike libpq's `require`, policyd never encrypts without knowing whom it talks to:
//! an unverifiable server is a failed connection (a stale replica, a refused write), never a
//! silent downgrade. Any other `sslmode` (`prefer`, the default when the URL says nothing, or
//! `disable`) connects in plain TCP, and `serve` says so when it starts.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::UpstreamError;

/// The TLS connector for `config`, trusting the system's roots and `ca`; `None`: plain TCP.
pub fn connector(
    config: &tokio_postgres::Config,
    ca: Option<&Path>,
) -> Result<Option<MakeRustlsConnect>, UpstreamError> {
    if config.get_ssl_mode() != SslMode::Require {
        return match ca {
            Some(_) => Err(UpstreamError::Tls(
                "--upstream-ca is given but the upstream URL does not ask for TLS: add sslmode=require"
                    .to_owned(),
            )),
            None => Ok(None),
        };
    }
    let mut roots = rustls::RootCertStore::empty();
    // A system root that does not parse is skipped: it could only ever fail to verify.
    let system = rustls_native_certs::load_native_certs();
    let _ = roots.add_parsable_certificates(system.certs);
    if let Some(path) = ca {
        let shown = path.display();
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| UpstreamError::Tls(format!("cannot read {shown}: {e}")))?;
        if certs.is_empty() {
            return Err(UpstreamError::Tls(format!(
                "{shown} holds no PEM certificate"
            )));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| UpstreamError::Tls(format!("{shown}: {e}")))?;
        }
    }
    if roots.is_empty() {
        return Err(UpstreamError::Tls(
            "sslmode=require, but no trusted root certificate was found: give --upstream-ca"
                .to_owned(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(MakeRustlsConnect::new(tls)))
}
