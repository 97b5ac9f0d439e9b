//! The process-wide rustls crypto provider.
//!
//! Redis over TLS, FTPS and S3 all use rustls. With more than one provider
//! compiled in, rustls cannot pick one by itself and fails when a client is
//! built, so every TLS user calls [`ensure_crypto_provider`] first.

/// Installs aws-lc-rs as the default rustls provider, once per process.
pub fn ensure_crypto_provider() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        // Fails only if another provider was installed first, which is fine.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}
