//! TLS to the broker: reading the CA, certificate and key files, building
//! the rustls client configuration, and telling a user in one line why a
//! handshake failed.
//!
//! Every file is read and parsed while the configuration is built, before
//! the database is opened or the network touched, so a missing or malformed
//! PEM file is exit 78 naming the file (rustls would only notice at the first
//! poll). Without `--cafile` the system's CA bundle is read from the usual
//! places (`SSL_CERT_FILE` first); no platform store is loaded that could
//! panic. `--insecure` keeps the chain check and skips only the host name
//! check. Handshake failures are mapped to exit 69 (the broker's certificate
//! is not trusted: unknown CA, wrong name, expired) or 77 (the broker refused
//! our client certificate), with a sentence instead of rustls' debug text.
//! For `check`, [`handshake`] makes one handshake with the same settings on a
//! plain socket, to show the broker's certificate chain.

use std::path::{Path, PathBuf};
#[cfg(feature = "tls")]
use std::sync::Arc;

use crate::error::{Error, Result};

/// The TLS options as given.
#[derive(Debug, Clone, Default)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub struct TlsOptions {
    pub cafile: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub insecure: bool,
    pub alpn: Option<String>,
}

/// A ready TLS client configuration.
#[derive(Clone)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub struct Tls {
    #[cfg(feature = "tls")]
    pub config: Arc<rumqttc::tokio_rustls::rustls::ClientConfig>,
    pub insecure: bool,
    /// The files it was made from, for `check` (none: the system bundle).
    pub cafile: Option<PathBuf>,
    pub cert: Option<PathBuf>,
}

/// What a TLS handshake with the broker showed (`check`).
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub struct Handshake {
    /// "TLS 1.3".
    pub version: String,
    /// The broker's certificate chain as it sent it (DER), its own first.
    pub chain: Vec<Vec<u8>>,
    /// How long the handshake took.
    pub took: std::time::Duration,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

/// A warning when a secret file is readable by group or others.
pub fn secret_file_warning(path: &Path, what: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "{what} {} is readable by group or others (mode {:o}); chmod 600 it",
            path.display(),
            mode & 0o777
        )
    })
}

#[cfg(not(feature = "tls"))]
impl Tls {
    pub fn build(
        _opts: &TlsOptions,
        _env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Tls> {
        Err(Error::config(
            "this frameflush was built without TLS support (cargo feature `tls`)",
        ))
    }
}

#[cfg(feature = "tls")]
mod imp {
    use super::*;
    use crate::error::Exit;
    use crate::sys::io_reason;

    /// Where a system's CA bundle usually is (Debian/Ubuntu, Fedora/RHEL,
    /// openSUSE, Alpine and the BSDs).
    pub const SYSTEM_CA_BUNDLES: [&str; 5] = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/ca-bundle.pem",
        "/etc/ssl/cert.pem",
        "/usr/local/share/certs/ca-root-nss.crt",
    ];

    fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
        std::fs::read(path).map_err(|e| {
            Error::config(format!(
                "cannot read {what} {}: {}",
                path.display(),
                io_reason(&e)
            ))
        })
    }

    /// The system CA bundle: `$SSL_CERT_FILE`, else the first of
    /// [`SYSTEM_CA_BUNDLES`] that exists.
    fn system_bundle(env: &dyn Fn(&str) -> Option<std::ffi::OsString>) -> Result<PathBuf> {
        if let Some(p) = env("SSL_CERT_FILE") {
            return Ok(PathBuf::from(p));
        }
        SYSTEM_CA_BUNDLES.iter().map(PathBuf::from).find(|p| p.is_file()).ok_or_else(|| {
            Error::config(format!(
                "no system CA certificates found (looked for {}); give the broker's CA with --cafile",
                SYSTEM_CA_BUNDLES.join(", ")
            ))
        })
    }

    use rumqttc::tokio_rustls::rustls::{
        self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
        client::WebPkiServerVerifier,
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
    };

    fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
        let pem = read(path, what)?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| {
                Error::config(format!("{what} {} is not valid PEM: {e}", path.display()))
            })?;
        if certs.is_empty() {
            return Err(Error::config(format!(
                "{what} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            )));
        }
        Ok(certs)
    }

    fn roots(path: &Path, what: &str) -> Result<RootCertStore> {
        let mut store = RootCertStore::empty();
        let (added, ignored) = store.add_parsable_certificates(certificates(path, what)?);
        if added == 0 {
            return Err(Error::config(format!(
                "{what} {} holds no usable CA certificate ({ignored} could not be parsed)",
                path.display()
            )));
        }
        Ok(store)
    }

    impl Tls {
        /// Reads and checks every file and builds the client configuration.
        pub fn build(
            opts: &TlsOptions,
            env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
        ) -> Result<Tls> {
            let store = match &opts.cafile {
                Some(ca) => roots(ca, "CA file")?,
                None => roots(&system_bundle(env)?, "system CA bundle")?,
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| Error::config(format!("cannot set up TLS: {e}")))?;
            let store = Arc::new(store);
            let builder = if opts.insecure {
                let inner = WebPkiServerVerifier::builder_with_provider(store, provider)
                    .build()
                    .map_err(|e| Error::config(format!("cannot set up TLS: {e}")))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyName { inner }))
            } else {
                builder.with_root_certificates(store)
            };
            let mut config = match (&opts.cert, &opts.key) {
                (Some(cert), Some(key)) => {
                    let chain = certificates(cert, "certificate file")?;
                    let key_pem = read(key, "key file")?;
                    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                        Error::config(format!(
                            "key file {} holds no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}",
                            key.display()
                        ))
                    })?;
                    builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                        Error::config(format!(
                            "certificate {} and key {} do not go together: {e}",
                            cert.display(),
                            key.display()
                        ))
                    })?
                }
                (None, None) => builder.with_no_client_auth(),
                (Some(_), None) => return Err(Error::config("--cert needs --key")),
                (None, Some(_)) => return Err(Error::config("--key needs --cert")),
            };
            if let Some(alpn) = &opts.alpn {
                config.alpn_protocols = vec![alpn.as_bytes().to_vec()];
            }
            Ok(Tls {
                config: Arc::new(config),
                insecure: opts.insecure,
                cafile: opts.cafile.clone(),
                cert: opts.cert.clone(),
            })
        }
    }

    /// The certificates (DER) of a PEM file, for `check`.
    pub fn pem_certificates(path: &Path, what: &str) -> Result<Vec<Vec<u8>>> {
        Ok(certificates(path, what)?
            .into_iter()
            .map(|c| c.as_ref().to_vec())
            .collect())
    }

    /// A TLS handshake on `stream`, as a run's connection makes it (same
    /// configuration: CA, name check, client certificate, ALPN), then a
    /// short wait for an alert: under TLS 1.3 a broker refuses a client
    /// certificate only after the client finished its half. Then a
    /// close_notify. `check` uses it to see the broker's certificate.
    pub fn handshake(
        tls: &Tls,
        host: &str,
        stream: &mut std::net::TcpStream,
        broker: &str,
        timeout: std::time::Duration,
    ) -> Result<Handshake> {
        use std::io::ErrorKind as K;
        let name = ServerName::try_from(host.to_string()).map_err(|_| {
            Error::config(format!(
                "TLS to {broker}: {host:?} is not a name a certificate can hold"
            ))
        })?;
        let mut conn = rustls::ClientConnection::new(tls.config.clone(), name)
            .map_err(|e| Error::config(format!("cannot set up TLS: {e}")))?;
        let failed = |e: std::io::Error| -> Error {
            if let Some(r) = e.get_ref().and_then(|r| r.downcast_ref::<rustls::Error>()) {
                return describe(r, broker);
            }
            match e.kind() {
                K::WouldBlock | K::TimedOut => Error::new(
                    Exit::Unavailable,
                    format!(
                        "TLS to {broker}: no answer to the handshake within {} s (is that port a TLS listener?)",
                        timeout.as_secs_f64()
                    ),
                ),
                K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted => Error::new(
                    Exit::Unavailable,
                    format!(
                        "TLS to {broker}: the broker closed the connection during the handshake (is that port a TLS listener?)"
                    ),
                ),
                _ => Error::new(
                    Exit::Unavailable,
                    format!("TLS to {broker}: {}", io_reason(&e)),
                ),
            }
        };
        let set = |stream: &mut std::net::TcpStream, t: std::time::Duration| {
            let _ = stream.set_read_timeout(Some(t));
            let _ = stream.set_write_timeout(Some(t));
        };
        set(stream, timeout);
        let start = std::time::Instant::now();
        let deadline = start + timeout;
        while conn.is_handshaking() {
            if std::time::Instant::now() > deadline {
                return Err(failed(K::TimedOut.into()));
            }
            conn.complete_io(stream).map_err(failed)?;
        }
        let took = start.elapsed();
        // A refusal of our certificate comes now, if at all (after the
        // session tickets a TLS 1.3 broker sends first).
        let wait = std::time::Duration::from_millis(300);
        set(stream, wait);
        let until = std::time::Instant::now() + wait;
        loop {
            match conn.complete_io(stream) {
                Ok((0, 0)) => break,
                Ok(_) if std::time::Instant::now() < until => {}
                Ok(_) => break,
                Err(e) if matches!(e.kind(), K::WouldBlock | K::TimedOut) => break,
                Err(e) => return Err(failed(e)),
            }
        }
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".to_string(),
            Some(other) => format!("{other:?}"),
            None => "TLS".to_string(),
        };
        let chain = conn
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|c| c.as_ref().to_vec())
            .collect();
        conn.send_close_notify();
        let _ = conn.complete_io(stream);
        Ok(Handshake {
            version,
            chain,
            took,
        })
    }

    /// Checks the chain like the default verifier but accepts a certificate
    /// whose names do not include the host (`--insecure`).
    #[derive(Debug)]
    struct AnyName {
        inner: Arc<WebPkiServerVerifier>,
    }

    impl ServerCertVerifier for AnyName {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp_response: &[u8],
            now: UnixTime,
        ) -> std::result::Result<ServerCertVerified, rustls::Error> {
            use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
            match self.inner.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Err(rustls::Error::InvalidCertificate(
                    NotValidForName | NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    }

    /// The rustls error inside a connection error, if any.
    fn rustls_error(e: &rumqttc::ConnectionError) -> Option<&rustls::Error> {
        use rumqttc::{ConnectionError, StateError, TlsError};
        let io = match e {
            ConnectionError::Tls(TlsError::TLS(r)) => return Some(r),
            ConnectionError::Tls(TlsError::Io(io))
            | ConnectionError::Io(io)
            | ConnectionError::MqttState(StateError::Io(io))
            | ConnectionError::MqttState(StateError::Deserialization(rumqttc::Error::Io(io))) => io,
            _ => return None,
        };
        io.get_ref()?.downcast_ref::<rustls::Error>()
    }

    /// The same for rumqttc's MQTT 5 client, whose errors are types of
    /// their own around the same TLS error.
    fn rustls_error_v5(e: &rumqttc::v5::ConnectionError) -> Option<&rustls::Error> {
        use rumqttc::v5::{ConnectionError, StateError, TlsError};
        let io = match e {
            ConnectionError::Tls(TlsError::TLS(r)) => return Some(r),
            ConnectionError::Tls(TlsError::Io(io))
            | ConnectionError::Io(io)
            | ConnectionError::MqttState(StateError::Io(io))
            | ConnectionError::MqttState(StateError::Deserialization(
                rumqttc::v5::mqttbytes::Error::Io(io),
            )) => io,
            _ => return None,
        };
        io.get_ref()?.downcast_ref::<rustls::Error>()
    }

    /// [`handshake_failure`] for the MQTT 5 client.
    pub fn handshake_failure_v5(e: &rumqttc::v5::ConnectionError, broker: &str) -> Option<Error> {
        rustls_error_v5(e).map(|r| describe(r, broker))
    }

    /// One line, and the exit status, for a TLS failure while connecting.
    pub fn handshake_failure(e: &rumqttc::ConnectionError, broker: &str) -> Option<Error> {
        rustls_error(e).map(|r| describe(r, broker))
    }

    fn describe(r: &rustls::Error, broker: &str) -> Error {
        use rustls::{AlertDescription as A, CertificateError as C};
        let (exit, why) = match r {
            rustls::Error::InvalidCertificate(c) => (
                Exit::Unavailable,
                match c {
                    C::UnknownIssuer => {
                        "the broker's certificate is not signed by a trusted CA (check --cafile)"
                            .to_string()
                    }
                    C::NotValidForName | C::NotValidForNameContext { .. } => format!(
                        "the broker's certificate is not valid for the host name {broker} (connect by a name the certificate holds, or --insecure)"
                    ),
                    C::Expired | C::ExpiredContext { .. } => {
                        "the broker's certificate has expired".to_string()
                    }
                    C::NotValidYet | C::NotValidYetContext { .. } => {
                        "the broker's certificate is not valid yet (is the gateway's clock right?)"
                            .to_string()
                    }
                    C::Revoked => "the broker's certificate is revoked".to_string(),
                    C::BadSignature => "the broker's certificate has a bad signature".to_string(),
                    other => format!("the broker's certificate was rejected ({other:?})"),
                },
            ),
            rustls::Error::AlertReceived(
                alert @ (A::CertificateRequired
                | A::BadCertificate
                | A::CertificateUnknown
                | A::UnknownCA
                | A::AccessDenied
                | A::UnsupportedCertificate
                | A::CertificateExpired
                | A::CertificateRevoked),
            ) => (
                Exit::NoPerm,
                format!(
                    "the broker refused the TLS client certificate (alert {alert:?}): check --cert and --key"
                ),
            ),
            rustls::Error::AlertReceived(alert) => (
                Exit::Unavailable,
                format!("the TLS handshake failed (the broker sent alert {alert:?})"),
            ),
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => (
                Exit::Unavailable,
                "the broker did not answer in TLS (is that port a TLS listener?)".to_string(),
            ),
            other => (
                Exit::Unavailable,
                format!("the TLS handshake failed: {other}"),
            ),
        };
        Error::new(exit, format!("TLS to {broker}: {why}"))
    }
}

#[cfg(feature = "tls")]
pub use imp::{handshake, handshake_failure, handshake_failure_v5, pem_certificates};

#[cfg(not(feature = "tls"))]
pub fn handshake_failure(_e: &rumqttc::ConnectionError, _broker: &str) -> Option<Error> {
    None
}

#[cfg(not(feature = "tls"))]
pub fn handshake_failure_v5(_e: &rumqttc::v5::ConnectionError, _broker: &str) -> Option<Error> {
    None
}
