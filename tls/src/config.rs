//! The rustls [`ServerConfig`]: protocol versions, cipher suites and clock.

use alloc::string::ToString;
use alloc::sync::Arc;
use alloc::vec;
use core::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::UnixTime;
use rustls::time_provider::TimeProvider;
use rustls::version::{TLS12, TLS13};
use rustls::{ServerConfig, SupportedCipherSuite};

use crate::{IdentityError, TlsIdentity};

/// The cipher suites offered, in the server's preference order (ChaCha20-Poly1305 first, see
/// [`server_config`]): the three TLS 1.3 suites
/// (RFC 8446 §B.4) and the three TLS 1.2 ECDHE_ECDSA AEAD suites (RFC 5289 §3.2,
/// RFC 7905 §2). No CBC, no RSA key exchange, no non-forward-secret suites.
pub static CIPHER_SUITES: &[SupportedCipherSuite] = &[
    rustls_rustcrypto::TLS13_CHACHA20_POLY1305_SHA256,
    rustls_rustcrypto::TLS13_AES_128_GCM_SHA256,
    rustls_rustcrypto::TLS13_AES_256_GCM_SHA384,
    rustls_rustcrypto::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    rustls_rustcrypto::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    rustls_rustcrypto::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
];

/// The RustCrypto provider (pure Rust, no_std) restricted to [`CIPHER_SUITES`]; key exchange
/// groups are the provider's (X25519, P-256, P-384).
pub fn provider() -> CryptoProvider {
    CryptoProvider {
        cipher_suites: CIPHER_SUITES.to_vec(),
        ..rustls_rustcrypto::provider()
    }
}

/// A rustls [`TimeProvider`] over a function returning Unix seconds (`None` if unknown).
/// Without a time, rustls cannot check certificate validity; as a server without client
/// authentication it only needs the time for session ticket lifetimes.
#[derive(Debug)]
pub struct FnTimeProvider(pub fn() -> Option<u64>);

impl TimeProvider for FnTimeProvider {
    fn current_time(&self) -> Option<UnixTime> {
        (self.0)().map(|s| UnixTime::since_unix_epoch(Duration::from_secs(s)))
    }
}

/// The rustls server configuration for `identity`: TLS 1.3 and 1.2 only (RFC 8446,
/// RFC 5246), only [`CIPHER_SUITES`], no client authentication, no 0-RTT early data
/// (`max_early_data_size = 0`, RFC 8446 §2.3), ALPN `http/1.1` (RFC 7301; clients that
/// offer ALPN without it are refused), rustls' default session resumption (see the
/// [`ServerConfig` docs](https://docs.rs/rustls/0.23/rustls/server/struct.ServerConfig.html)).
/// `clock` gives Unix seconds, `None` if unknown.
pub fn server_config(
    identity: &TlsIdentity,
    clock: fn() -> Option<u64>,
) -> Result<Arc<ServerConfig>, IdentityError> {
    let config_error = |e: rustls::Error| IdentityError::Config(e.to_string());
    let mut config =
        ServerConfig::builder_with_details(Arc::new(provider()), Arc::new(FnTimeProvider(clock)))
            .with_protocol_versions(&[&TLS13, &TLS12])
            .map_err(config_error)?
            .with_no_client_auth()
            .with_single_cert(identity.chain().to_vec(), identity.key())
            .map_err(config_error)?;
    config.max_early_data_size = 0;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // The server's order decides: ChaCha20-Poly1305 first. The appliance's build has no AES
    // instructions (the UEFI target is soft-float, the AES crates run their constant-time
    // bitsliced software), where ChaCha20 is the faster of the two, the case RFC 7905 §1
    // gives for it; clients prefer AES-GCM when they have AES-NI themselves.
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}
