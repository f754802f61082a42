//! TLS for `curl https://`: rustls is sans-IO too, so its records are carried over the
//! stack's connection by the same calls that carry plain HTTP.
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::path::Path;
use std::sync::Arc;

/// Why TLS could not start, with curl's exit code for it.
#[derive(Debug)]
pub struct TlsSetupError {
    pub code: i32,
    pub message: String,
}

/// Client configuration: the system's CA roots, or `--cacert FILE`, or no verification
/// at all with `-k`.
pub fn client_config(
    cacert: Option<&Path>,
    insecure: bool,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError {
            code: 35,
            message: format!("TLS setup: {e}"),
        })?;
    let config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        match cacert {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| TlsSetupError {
                        code: 77,
                        message: format!("error setting certificate file: {}: {e}", path.display()),
                    })?;
                if certs.is_empty() {
                    return Err(TlsSetupError {
                        code: 77,
                        message: format!("no certificates in {}", path.display()),
                    });
                }
                roots.add_parsable_certificates(certs);
            }
            None => {
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

pub fn connection(
    config: Arc<ClientConfig>,
    host: &str,
) -> Result<ClientConnection, TlsSetupError> {
    let name = ServerName::try_from(host.to_string()).map_err(|e| TlsSetupError {
        code: 3,
        message: format!("bad TLS server name {host}: {e}"),
    })?;
    ClientConnection::new(config, name).map_err(|e| TlsSetupError {
        code: 35,
        message: format!("TLS: {e}"),
    })
}

/// curl's exit code for a TLS failure: 60 when the peer's certificate was refused.
pub fn error_code(e: &rustls::Error) -> i32 {
    match e {
        rustls::Error::InvalidCertificate(_) => 60,
        _ => 35,
    }
}

/// `-k`: accept any certificate, still checking the handshake signatures.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
