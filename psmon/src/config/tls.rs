//! `ps_ssl.conf`: TLS for the HTTP endpoint (`KEY = value`, like
//! psagent.conf): `CERTIFICATE` (PEM, the chain), `KEY` (PEM private key)
//! and, to require client certificates, `CLIENT_CA` (PEM). Parsing checks
//! the syntax; [`Tls::server_config`] loads the files, which `psmon check`
//! reports as errors and `psmon run` as the reason the endpoint stays off.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use super::{
    Diagnostic, hint,
    pfile::{Diagnostics, key_value_lines, normalize_key},
};

/// What ps_ssl.conf says, and where, for messages.
#[derive(Clone, Debug, PartialEq)]
pub struct Tls {
    /// ps_ssl.conf itself.
    pub file: PathBuf,
    /// CERTIFICATE, and the line that names it.
    pub certificate: (PathBuf, usize),
    /// KEY, and its line.
    pub key: (PathBuf, usize),
    /// CLIENT_CA (clients must show a certificate it signed), and its line.
    pub client_ca: Option<(PathBuf, usize)>,
}

const KEYS: [&str; 3] = ["CERTIFICATE", "KEY", "CLIENT_CA"];

pub(super) fn parse(file: &Path, text: &str, errors: &mut Vec<Diagnostic>) -> Option<Tls> {
    let mut r = Diagnostics::new(file, errors);
    let (mut certificate, mut key, mut client_ca) = (None, None, None);
    for (n, kv) in key_value_lines(&mut r, text) {
        let slot = match normalize_key(kv.key).as_str() {
            "CERTIFICATE" => &mut certificate,
            "KEY" | "PRIVATEKEY" => &mut key,
            "CLIENTCA" => &mut client_ca,
            _ => {
                let hint = hint(kv.key, &KEYS);
                r.error(
                    n,
                    kv.key_col,
                    format!("unknown ps_ssl.conf key `{}`{hint}", kv.key),
                );
                continue;
            }
        };
        if !kv.value.starts_with('/') {
            r.error(
                n,
                kv.value_col,
                format!("`{}` must be an absolute path", kv.value),
            );
            continue;
        }
        *slot = Some((PathBuf::from(kv.value), n));
    }
    match (certificate, key) {
        (Some(certificate), Some(key)) => Some(Tls {
            file: file.to_path_buf(),
            certificate,
            key,
            client_ca,
        }),
        (c, k) => {
            let missing = match (c, k) {
                (None, None) => "CERTIFICATE and KEY",
                (None, _) => "CERTIFICATE",
                _ => "KEY",
            };
            r.error(
                0,
                0,
                format!("ps_ssl.conf must name {missing} (PEM files) for the endpoint to use TLS"),
            );
            None
        }
    }
}

impl Tls {
    /// Loads the certificate, key and client CA into a server configuration;
    /// an error names the file and what is wrong with it.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, Diagnostic> {
        let at = |line: usize, message: String| Diagnostic {
            file: self.file.clone(),
            line,
            col: 1,
            message,
        };
        // Read as configuration is: a FIFO, a device or a huge file is
        // refused rather than waited on.
        let pem = |path: &Path, line: usize, what: &str| {
            super::files::read(path, super::LoadOptions { insecure: true }).map_err(|d| {
                at(
                    line,
                    format!("cannot read {what} {}: {}", path.display(), d.message),
                )
            })
        };
        let (cert_path, cert_line) = &self.certificate;
        let cert_pem = pem(cert_path, *cert_line, "certificate")?;
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    at(
                        *cert_line,
                        format!("cannot read certificate {}: {e}", cert_path.display()),
                    )
                })?;
        if certs.is_empty() {
            return Err(at(
                *cert_line,
                format!("{} holds no PEM certificate", cert_path.display()),
            ));
        }
        let (key_path, key_line) = &self.key;
        let key_pem = pem(key_path, *key_line, "private key")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
            at(
                *key_line,
                format!("cannot read private key {}: {e}", key_path.display()),
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| at(0, format!("TLS: {e}")))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some((ca_path, ca_line)) => {
                let mut roots = rustls::RootCertStore::empty();
                let ca_pem = pem(ca_path, *ca_line, "CA")?;
                let cas = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        at(
                            *ca_line,
                            format!("cannot read CA {}: {e}", ca_path.display()),
                        )
                    })?;
                for ca in cas {
                    roots.add(ca).map_err(|e| {
                        at(
                            *ca_line,
                            format!("{} is not a usable CA certificate: {e}", ca_path.display()),
                        )
                    })?;
                }
                if roots.is_empty() {
                    return Err(at(
                        *ca_line,
                        format!("{} holds no PEM certificate", ca_path.display()),
                    ));
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| at(*ca_line, format!("client CA {}: {e}", ca_path.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder.with_single_cert(certs, key).map_err(|e| {
            at(
                *key_line,
                format!(
                    "{} does not go with {}: {e}",
                    key_path.display(),
                    cert_path.display()
                ),
            )
        })?;
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_a_certificate_and_a_key() {
        let mut errors = Vec::new();
        let tls = parse(
            Path::new("ps_ssl.conf"),
            "CERTIFICATE = /etc/psmon/tls/server.crt\nKEY = /etc/psmon/tls/server.key\nCLIENT_CA = /etc/psmon/tls/ca.crt\n",
            &mut errors,
        )
        .unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(tls.key.0, Path::new("/etc/psmon/tls/server.key"));
        assert_eq!(tls.client_ca.unwrap().1, 3);

        let mut errors = Vec::new();
        let tls = parse(
            Path::new("ps_ssl.conf"),
            "CERTIFICAT = /x\nKEY = relative.key\n",
            &mut errors,
        );
        assert!(tls.is_none());
        let got: Vec<_> = errors
            .iter()
            .map(|d| (d.line, d.col, d.message.as_str()))
            .collect();
        assert_eq!(got[0].0, 1);
        assert!(got[0].2.contains("did you mean `CERTIFICATE`"), "{got:?}");
        assert_eq!((got[1].0, got[1].1), (2, 7));
        assert!(
            got[2].2.contains("must name CERTIFICATE and KEY"),
            "{got:?}"
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let tls = Tls {
            file: "ps_ssl.conf".into(),
            certificate: ("/nonexistent/server.crt".into(), 1),
            key: ("/nonexistent/server.key".into(), 2),
            client_ca: None,
        };
        let e = tls.server_config().unwrap_err();
        assert_eq!(e.line, 1);
        assert!(
            e.message
                .contains("cannot read certificate /nonexistent/server.crt"),
            "{e}"
        );
    }

    /// A FIFO named as the certificate is refused at once, not waited on.
    #[test]
    fn a_fifo_is_refused_not_read() {
        let dir = std::env::temp_dir().join(format!("psmon-tls-fifo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("server.crt");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let tls = Tls {
            file: "ps_ssl.conf".into(),
            certificate: (fifo.clone(), 1),
            key: (fifo.clone(), 2),
            client_ca: None,
        };
        let e = tls.server_config().unwrap_err();
        assert!(e.message.contains("a FIFO"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
