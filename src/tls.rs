//! TLS for the connections the worker opens, on rustls with the ring provider.
//!
//! PostgreSQL follows libpq: `sslmode` in the URL (`disable`, `prefer` — the default —,
//! `require`, `verify-ca`, `verify-full`) with `sslrootcert` (a PEM file, or `system` for the
//! operating system's trusted roots), `sslcert` and `sslkey` (a client certificate). As in
//! libpq, `prefer` and `require` encrypt without checking who answers — unless a root
//! certificate is given, which makes `require` check the chain like `verify-ca` —, `verify-ca`
//! checks the chain, and `verify-full` the chain and the host name. [`PgTls::from_url`] takes
//! those parameters off the URL (tokio-postgres knows only the first three modes) and builds
//! the one rustls configuration both the regular connections and the replication connection
//! use. Pure apart from reading the certificate files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// Errors of TLS settings: named after the parameter and file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{param} {path}: {message}")]
    File {
        param: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub const ALL: [&'static str; 5] = ["disable", "prefer", "require", "verify-ca", "verify-full"];

    pub fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// Whether a server that refuses TLS is refused.
    pub fn required(self) -> bool {
        !matches!(self, SslMode::Disable | SslMode::Prefer)
    }
}

/// The TLS side of a PostgreSQL URL.
#[derive(Debug, Clone)]
pub struct PgTls {
    pub mode: SslMode,
    /// The client configuration (`None` with `sslmode=disable`).
    pub config: Option<Arc<ClientConfig>>,
}

impl Default for PgTls {
    fn default() -> Self {
        PgTls {
            mode: SslMode::Prefer,
            config: client_config(Verify::Nothing, None, None)
                .ok()
                .map(Arc::new),
        }
    }
}

/// `url` without its TLS parameters.
pub fn strip_params(url: &str) -> String {
    split_params(url).0
}

/// The libpq TLS parameters a URL may carry.
const PARAMS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

impl PgTls {
    /// Settings that refuse every connection: TLS required and no way to do it (for TLS
    /// settings that stopped loading — fail closed).
    pub fn unusable() -> PgTls {
        PgTls {
            mode: SslMode::VerifyFull,
            config: None,
        }
    }

    /// Splits the TLS parameters off `url` (URL or `key=value` form): the URL for
    /// tokio-postgres without them, and the settings they make.
    pub fn from_url(url: &str) -> Result<(String, PgTls), TlsError> {
        let (rest, params) = split_params(url);
        let get = |k: &str| params.iter().find(|(p, _)| p == k).map(|(_, v)| v.as_str());
        let mode = match get("sslmode") {
            None => SslMode::Prefer,
            Some(m) => SslMode::parse(m).ok_or_else(|| {
                TlsError::Invalid(format!(
                    "sslmode={m}: expected one of {}",
                    SslMode::ALL.join(", ")
                ))
            })?,
        };
        if mode == SslMode::Disable {
            return Ok((rest, PgTls { mode, config: None }));
        }
        let explicit_root = get("sslrootcert").map(PathBuf::from);
        let default_root = std::env::var_os("HOME")
            .map(|h| Path::new(&h).join(".postgresql/root.crt"))
            .filter(|p| p.exists());
        let root = explicit_root.clone().or(default_root);
        let verify = match mode {
            SslMode::VerifyFull => Verify::ChainAndName,
            SslMode::VerifyCa => Verify::Chain,
            // libpq: a root certificate given makes `require` verify the chain.
            SslMode::Require if explicit_root.is_some() => Verify::Chain,
            _ => Verify::Nothing,
        };
        if verify != Verify::Nothing && root.is_none() {
            return Err(TlsError::Invalid(format!(
                "sslmode={}: no root certificate to verify the server with: set sslrootcert to a \
                 PEM file (or sslrootcert=system for the system's trusted roots)",
                get("sslmode").unwrap_or_default()
            )));
        }
        let client = match (get("sslcert"), get("sslkey")) {
            (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
            (None, None) => None,
            _ => {
                return Err(TlsError::Invalid(
                    "sslcert and sslkey go together (a client certificate and its key)".into(),
                ))
            }
        };
        let roots = match verify {
            Verify::Nothing => None,
            _ => root.as_deref(),
        };
        let config = client_config(verify, roots, client.as_ref())?;
        Ok((
            rest,
            PgTls {
                mode,
                config: Some(Arc::new(config)),
            },
        ))
    }
}

/// How much of the server's certificate to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Encrypt only (libpq's `require`).
    Nothing,
    /// The chain up to a trusted root (`verify-ca`).
    Chain,
    /// The chain and the host name (`verify-full`).
    ChainAndName,
}

/// A rustls client configuration: roots from `roots` (a PEM file, or `system`), and a client
/// certificate `(cert, key)` when given.
pub fn client_config(
    verify: Verify,
    roots: Option<&Path>,
    client: Option<&(PathBuf, PathBuf)>,
) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match verify {
        Verify::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Relaxed {
                provider,
                chain: None,
            })),
        _ => {
            let store = Arc::new(root_store(roots)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(store, provider.clone())
                .build()
                .map_err(|e| TlsError::Invalid(format!("sslrootcert: {e}")))?;
            if verify == Verify::Chain {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Relaxed {
                        provider,
                        chain: Some(webpki),
                    }))
            } else {
                builder.with_webpki_verifier(webpki)
            }
        }
    };
    Ok(match client {
        Some((cert, key)) => {
            let certs = read_certs("sslcert", cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
                param: "sslkey",
                path: key.clone(),
                message: e.to_string(),
            })?;
            builder.with_client_auth_cert(certs, key)?
        }
        None => builder.with_no_client_auth(),
    })
}

fn read_certs(param: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError::File {
        param,
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// Trusted roots: the PEM file's certificates, or the system's for `system`.
fn root_store(roots: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match roots {
        Some(p) if p == Path::new("system") => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(TlsError::Invalid(
                    "sslrootcert=system: the system has no trusted root certificates".into(),
                ));
            }
        }
        Some(p) => {
            for c in read_certs("sslrootcert", p)? {
                store.add(c).map_err(|e| TlsError::File {
                    param: "sslrootcert",
                    path: p.to_path_buf(),
                    message: e.to_string(),
                })?;
            }
        }
        None => {}
    }
    Ok(store)
}

/// libpq's relaxed modes, one verifier: `sslmode=require` (no chain: encrypt, trust whoever
/// answers) and `verify-ca` (a chain that must lead to a trusted root; the name is not
/// checked). Handshake signatures are always checked with the provider's algorithms, so the
/// handshake itself is sound.
#[derive(Debug)]
struct Relaxed {
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// The chain's verifier (`verify-ca`); `None` for `require`.
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for Relaxed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `url` without the TLS parameters, and those parameters (percent-decoded). Handles the URL
/// form (`postgres://…?sslmode=require&…`) and the `key=value` form.
fn split_params(url: &str) -> (String, Vec<(String, String)>) {
    let mut found = Vec::new();
    if url.contains("://") {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_string(), found);
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if PARAMS.contains(&k) {
                found.push((k.to_string(), percent_decode(v)));
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        (rest, found)
    } else {
        let mut kept = Vec::new();
        for token in url.split_whitespace() {
            match token.split_once('=') {
                Some((k, v)) if PARAMS.contains(&k) => {
                    found.push((k.to_string(), v.trim_matches('\'').to_string()))
                }
                _ => kept.push(token),
            }
        }
        (kept.join(" "), found)
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => match u8::from_str_radix(&String::from_utf8_lossy(hex), 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                }
                Err(_) => {
                    out.push(b'%');
                    i += 1;
                }
            },
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_come_off_the_url() {
        let (rest, p) = split_params(
            "postgres://u:p@db:5432/app?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(rest, "postgres://u:p@db:5432/app?application_name=x");
        assert_eq!(
            p,
            [
                ("sslmode".to_string(), "verify-full".to_string()),
                ("sslrootcert".to_string(), "/etc/ca.pem".to_string())
            ]
        );
        let (rest, p) = split_params("host=db user=u sslmode=require dbname=app");
        assert_eq!(rest, "host=db user=u dbname=app");
        assert_eq!(p, [("sslmode".to_string(), "require".to_string())]);
        assert_eq!(split_params("postgres://db/app").0, "postgres://db/app");
    }

    #[test]
    fn modes_follow_libpq() {
        let (_, t) = PgTls::from_url("postgres://db/app").unwrap();
        assert_eq!(t.mode, SslMode::Prefer);
        assert!(t.config.is_some());
        let (_, t) = PgTls::from_url("postgres://db/app?sslmode=disable").unwrap();
        assert!(t.config.is_none());
        assert!(PgTls::from_url("postgres://db/app?sslmode=require").is_ok());
        let e =
            PgTls::from_url("postgres://db/app?sslmode=verify-full&sslrootcert=/nonexistent.pem")
                .unwrap_err()
                .to_string();
        assert!(e.contains("sslrootcert /nonexistent.pem"), "{e}");
        let e = PgTls::from_url("postgres://db/app?sslmode=always")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("expected one of disable, prefer, require, verify-ca, verify-full"),
            "{e}"
        );
        let e = PgTls::from_url("postgres://db/app?sslmode=require&sslcert=/c.pem")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sslcert and sslkey go together"), "{e}");
    }
}
