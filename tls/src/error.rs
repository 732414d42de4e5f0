//! [`IdentityError`]: what is wrong with a certificate, key or TLS configuration.

use alloc::string::String;

/// Why a [`TlsIdentity`](crate::TlsIdentity) (or a configuration built from one) was rejected.
/// Each variant names one problem, so the console can tell the operator what to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The certificate PEM holds no `CERTIFICATE` block.
    #[error("no CERTIFICATE block in the certificate PEM")]
    NoCertificate,
    /// A PEM block is malformed (bad armour or base64), RFC 7468.
    #[error("malformed PEM: {0}")]
    Pem(String),
    /// Certificate `index` of the chain (0 = end-entity) is not a parseable X.509 certificate
    /// (RFC 5280 §4.1).
    #[error(
        "certificate {index} of the chain (0 = end-entity) is not a valid X.509 certificate: {reason}"
    )]
    CertificateUnparseable {
        /// Position in the chain, 0 being the end-entity certificate.
        index: usize,
        /// The parser's message.
        reason: String,
    },
    /// The key PEM holds no `PRIVATE KEY`, `EC PRIVATE KEY` or `RSA PRIVATE KEY` block.
    #[error("no PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY block in the key PEM")]
    NoKey,
    /// The private key is not a parseable PKCS#8 (RFC 5208), SEC1 (RFC 5915) or PKCS#1
    /// (RFC 8017) structure.
    #[error("the private key cannot be parsed: {0}")]
    KeyUnparseable(String),
    /// The key is of a type the TLS stack cannot sign with (supported: ECDSA P-256 and P-384,
    /// Ed25519, RSA; keys must not be encrypted).
    #[error("unsupported private key type: {0}")]
    UnsupportedKeyType(String),
    /// The private key does not belong to the end-entity certificate's public key.
    #[error("the private key does not match the certificate's public key")]
    KeyMismatch,
    /// A name for a generated certificate is empty or not ASCII (RFC 5280 §4.2.1.6).
    #[error("invalid certificate name {0:?}")]
    InvalidName(String),
    /// Building a certificate failed (e.g. a validity beyond the year 9999).
    #[error("cannot build the certificate: {0}")]
    Generation(String),
    /// The random source failed.
    #[error("the random number source failed")]
    Random,
    /// Persisted identity bytes are malformed (see [`TlsIdentity::from_bytes`](crate::TlsIdentity::from_bytes)).
    #[error("malformed identity bytes: {0}")]
    Encoding(&'static str),
    /// rustls rejected the configuration.
    #[error("TLS configuration rejected: {0}")]
    Config(String),
}
