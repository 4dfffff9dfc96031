//! `[route.tls]`: what a route's upstream connection trusts (a CA bundle, the operating system's
//! trust store, or by default the bundled web PKI roots) and the client certificate it presents.
//! Every file is read and checked here, at start, so that a wrong path, a file that is not PEM or a
//! key that does not belong to its certificate fails with the config file's line rather than on
//! the first request. There is deliberately no way to turn certificate verification off.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Source};

/// The TLS settings of one route, validated and ready for its upstream client.
#[derive(Clone)]
pub struct RouteTls {
    /// The rustls client configuration (roots and client certificate; ALPN is left to the
    /// connector).
    pub client: Arc<rustls::ClientConfig>,
    /// What the route trusts and presents, for the log line at start.
    pub summary: String,
}

impl std::fmt::Debug for RouteTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTls")
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

/// The `[route.tls]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTls {
    ca_file: Option<Spanned<String>>,
    system_roots: Option<Spanned<bool>>,
    client_cert_file: Option<Spanned<String>>,
    client_key_file: Option<Spanned<String>>,
}

/// Build a route's TLS settings; `None` when the table asks for nothing beyond the defaults (the
/// route then shares the gateway's default client). `base` is the directory relative file names
/// are read from: the config file's own.
pub(super) fn route_tls(
    source: &Source<'_>,
    base: &Path,
    table: &Spanned<FileTls>,
    upstream: &url::Url,
) -> Result<Option<RouteTls>, ConfigError> {
    let tls = table.get_ref();
    let system_roots = tls.system_roots.as_ref().filter(|s| *s.get_ref());
    if tls.ca_file.is_none()
        && system_roots.is_none()
        && tls.client_cert_file.is_none()
        && tls.client_key_file.is_none()
    {
        return Ok(None);
    }
    if upstream.scheme() != "https" {
        return Err(source.at(
            table,
            format!(
                "[route.tls] applies to an https upstream; this route's upstream is {upstream}"
            ),
        ));
    }
    let mut summary = Vec::new();
    let mut roots = RootCertStore::empty();
    if let Some(ca) = &tls.ca_file {
        let path = resolve(base, ca.get_ref());
        let pem = read(source, ca, &path, "a PEM file of CA certificates")?;
        let certs = certificates(source, ca, &path, &pem, "the CA certificates")?;
        let count = certs.len();
        for (i, cert) in certs.into_iter().enumerate() {
            roots.add(cert).map_err(|e| {
                source.at(
                    ca,
                    format!(
                        "certificate {} of {} in ca_file '{}' is not a usable CA certificate ({e}); expected PEM X.509 certificates",
                        i + 1,
                        count,
                        path.display()
                    ),
                )
            })?;
        }
        summary.push(format!("ca_file {} ({count} certificates)", path.display()));
    }
    if let Some(flag) = system_roots {
        let found = rustls_native_certs::load_native_certs();
        let (added, _ignored) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let why = found
                .errors
                .first()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            return Err(source.at(
                flag,
                format!(
                    "system_roots: the operating system's trust store has no usable certificate{why}; expected the system CA bundle (Debian: the ca-certificates package; or SSL_CERT_FILE naming a PEM bundle)"
                ),
            ));
        }
        summary.push(format!("the system trust store ({added} certificates)"));
    }
    if roots.is_empty() {
        // Neither replaced them: the bundled web PKI roots, as for routes without TLS settings.
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        summary.push("the bundled web PKI roots".into());
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| source.at(table, format!("TLS cannot be set up: {e}")))?
        .with_root_certificates(roots);
    let client = match (&tls.client_cert_file, &tls.client_key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), None) => {
            return Err(source.at(
                cert,
                "client_cert_file needs client_key_file beside it: the certificate's private key, PEM",
            ));
        }
        (None, Some(key)) => {
            return Err(source.at(
                key,
                "client_key_file needs client_cert_file beside it: the client certificate (and its chain), PEM",
            ));
        }
        (Some(cert), Some(key)) => {
            let cert_path = resolve(base, cert.get_ref());
            let pem = read(
                source,
                cert,
                &cert_path,
                "a PEM file with the client certificate",
            )?;
            let chain = certificates(source, cert, &cert_path, &pem, "the client certificate")?;
            let key_path = resolve(base, key.get_ref());
            let pem = read(source, key, &key_path, "a PEM file with the private key")?;
            let private = private_key(source, key, &key_path, &pem)?;
            summary.push(format!("client certificate {}", cert_path.display()));
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| match e {
                    rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                        source.at(
                            key,
                            format!(
                                "the private key in '{}' does not belong to the certificate in '{}'; expected the key the client certificate was issued for",
                                key_path.display(),
                                cert_path.display()
                            ),
                        )
                    }
                    other => source.at(
                        key,
                        format!(
                            "the client certificate '{}' and key '{}' cannot be used ({other}); expected a PEM certificate and its RSA, EC or Ed25519 private key",
                            cert_path.display(),
                            key_path.display()
                        ),
                    ),
                })?
        }
    };
    Ok(Some(RouteTls {
        client: Arc::new(client),
        summary: summary.join(", "),
    }))
}

fn resolve(base: &Path, name: &str) -> PathBuf {
    let path = Path::new(name);
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

fn read(
    source: &Source<'_>,
    at: &Spanned<String>,
    path: &Path,
    expected: &str,
) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| {
        source.at(
            at,
            format!(
                "cannot read '{}' ({e}); expected {expected}",
                path.display()
            ),
        )
    })
}

/// Every certificate of a PEM file, at least one; other PEM sections are skipped.
fn certificates(
    source: &Source<'_>,
    at: &Spanned<String>,
    path: &Path,
    pem: &[u8],
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            source.at(
                at,
                format!(
                    "'{}' is not a valid PEM file ({e}); expected {what} as \"-----BEGIN CERTIFICATE-----\" blocks",
                    path.display()
                ),
            )
        })?;
    if certs.is_empty() {
        return Err(source.at(
            at,
            format!(
                "'{}' holds no certificate; expected {what} as PEM \"-----BEGIN CERTIFICATE-----\" blocks",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

fn private_key(
    source: &Source<'_>,
    at: &Spanned<String>,
    path: &Path,
    pem: &[u8],
) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        let why = match e {
            rustls::pki_types::pem::Error::NoItemsFound => "holds no private key".to_owned(),
            other => format!("is not a valid PEM file ({other})"),
        };
        source.at(
            at,
            format!(
                "'{}' {why}; expected an unencrypted PEM private key (\"-----BEGIN PRIVATE KEY-----\", RSA or EC)",
                path.display()
            ),
        )
    })
}
