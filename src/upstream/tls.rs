//! TLS towards upstreams: the connector a route's client is built on, and what a failed handshake
//! tells the client. A rustls error sits somewhere down the source chain of the client's error
//! (inside an `io::Error` from the TLS stream), so the chain is walked to find it.

use rustls::{AlertDescription, CertificateError};

/// Why a TLS connection to the upstream failed, for the client's error message; `None` when the
/// error was not a TLS failure.
pub(crate) fn failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(error);
    // Error chains are short; the bound keeps a cyclic `source()` from looping.
    for _ in 0..32 {
        let err = current?;
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(describe(tls));
        }
        let io = err.downcast_ref::<std::io::Error>();
        if let Some(alert) = io.and_then(alert_in_text) {
            return Some(describe(&rustls::Error::AlertReceived(alert)));
        }
        // `io::Error::source` skips the error it wraps (the connector wraps the TLS stream's
        // `io::Error` in another one), so go into it instead.
        current = match io.and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// Alerts an upstream sends when it refuses the handshake after it completed on our side: in
/// TLS 1.3 a server checks the client certificate only then, so its alert arrives with the first
/// read of the connection.
const LATE_ALERTS: &[AlertDescription] = &[
    AlertDescription::CertificateRequired,
    AlertDescription::BadCertificate,
    AlertDescription::UnsupportedCertificate,
    AlertDescription::CertificateRevoked,
    AlertDescription::CertificateExpired,
    AlertDescription::CertificateUnknown,
    AlertDescription::UnknownCA,
    AlertDescription::AccessDenied,
    AlertDescription::HandshakeFailure,
    AlertDescription::DecryptError,
];

/// The alert of an `io::Error` that carries a rustls alert as text only. An HTTP/2 connection
/// keeps only the kind and message of the I/O error that ended it, so the typed error is gone by
/// the time it reaches the client; the message is rustls's own `Display` of it, compared whole.
fn alert_in_text(io: &std::io::Error) -> Option<AlertDescription> {
    if io.kind() != std::io::ErrorKind::InvalidData {
        return None;
    }
    let text = io.get_ref()?.to_string();
    LATE_ALERTS
        .iter()
        .copied()
        .find(|a| rustls::Error::AlertReceived(*a).to_string() == text)
}

/// The cause in words a client's operator can act on. Names no host or file: those are in the
/// gateway's log line.
fn describe(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => {
                "upstream certificate is not trusted (unknown issuer); configure the route's CA with [route.tls] ca_file or system_roots".into()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "upstream certificate expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "upstream certificate is not valid yet".into()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "upstream certificate is not valid for the upstream's host name".into()
            }
            CertificateError::Revoked => "upstream certificate is revoked".into(),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "upstream certificate is not for TLS servers (wrong extended key usage)".into()
            }
            CertificateError::BadSignature
            | CertificateError::UnsupportedSignatureAlgorithmContext { .. }
            | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                "upstream certificate has a bad or unsupported signature".into()
            }
            other => format!("upstream certificate is invalid ({other:?})"),
        },
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::CertificateRequired => {
                "the upstream requires a client certificate; configure one with [route.tls] client_cert_file and client_key_file".into()
            }
            AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied => {
                format!("the upstream refused the gateway's client certificate ({alert:?} alert)")
            }
            other => format!("the TLS handshake with the upstream failed ({other:?} alert)"),
        },
        rustls::Error::NoCertificatesPresented => {
            "the upstream presented no certificate".into()
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "the upstream did not answer with TLS (is it an http:// service?)".into()
        }
        other => format!("TLS with the upstream failed ({other})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rustls_error_is_found_inside_io_errors_down_the_chain() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("client error")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            unknown,
        ));
        let cause = failure(&e).unwrap();
        assert!(cause.contains("not trusted (unknown issuer)"), "{cause}");
        let expired = rustls::Error::InvalidCertificate(CertificateError::Expired);
        assert_eq!(
            failure(&expired).as_deref(),
            Some("upstream certificate expired")
        );
        let required = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        assert!(failure(&required).unwrap().contains("client certificate"));
        // As an HTTP/2 connection hands it on: the same error as text.
        let text = std::io::Error::new(std::io::ErrorKind::InvalidData, required.to_string());
        assert!(
            failure(&Outer(text))
                .unwrap()
                .contains("requires a client certificate")
        );
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(failure(&Outer(plain)), None);
    }
}
