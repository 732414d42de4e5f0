//! [`TlsIdentity`]: the server's certificate chain and private key, from PEM, generated
//! (self-signed) or from the compact persistence encoding; and its [`Fingerprint`].
//!
//! Every constructor validates the identity the same way: each certificate parses as X.509
//! (RFC 5280), the end-entity certificate is accepted by webpki (which rustls uses), the key
//! is a type the TLS stack can sign with, and the key belongs to the certificate. The last
//! check signs a probe message with the key and verifies it with the certificate's public key:
//! rustls' own check (`rustls::sign::CertifiedKey::keys_match`) compares SPKIs, but the
//! RustCrypto provider's keys cannot report theirs, so it would pass any key.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use p256::pkcs8::PrivateKeyInfo;
use rustls::SignatureScheme;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer};
use sha2_0_10::{Digest, Sha256};
use x509_cert::der::Decode;
use x509_cert::der::oid::ObjectIdentifier;

use crate::{IdentityError, certgen, config};

/// id-ecPublicKey (RFC 5480 §2.1.1).
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// secp256r1 (RFC 5480 §2.1.1.1).
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// secp384r1 (RFC 5480 §2.1.1.1).
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
/// rsaEncryption (RFC 8017 Appendix C).
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// id-Ed25519 (RFC 8410 §3).
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// Schemes offered to the key when checking that it matches the certificate.
const PROBE_SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ED25519,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PKCS1_SHA256,
];
const PROBE_MESSAGE: &[u8] = b"api-tls: does this key belong to this certificate?";

/// Magic at the start of [`TlsIdentity::to_bytes`].
const MAGIC: &[u8; 6] = b"TLSID1";
/// Length of the SHA-256 trailer of [`TlsIdentity::to_bytes`].
const CHECKSUM_LEN: usize = 32;

/// Encoding of the private key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyFormat {
    /// PKCS#8 PrivateKeyInfo (RFC 5208), PEM label `PRIVATE KEY`.
    Pkcs8 = 1,
    /// PKCS#1 RSAPrivateKey (RFC 8017), PEM label `RSA PRIVATE KEY`.
    Pkcs1 = 3,
}

impl KeyFormat {
    fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(Self::Pkcs8),
            3 => Some(Self::Pkcs1),
            _ => None,
        }
    }
}

/// A server identity: certificate chain (DER, end-entity first) and its private key.
///
/// The key is held as PKCS#8 (SEC1 P-256 keys are converted on loading) or, for RSA keys
/// given as `RSA PRIVATE KEY`, PKCS#1. Note that TLS 1.2 is only offered with ECDHE_ECDSA
/// suites (see [`server_config`](crate::server_config)), so an RSA or Ed25519 identity serves
/// TLS 1.3 clients only.
#[derive(Clone)]
pub struct TlsIdentity {
    chain: Vec<CertificateDer<'static>>,
    key_format: KeyFormat,
    key_der: Vec<u8>,
}

impl TlsIdentity {
    /// From PEM text (RFC 7468): one or more `CERTIFICATE` blocks (end-entity first), and a
    /// `PRIVATE KEY` (PKCS#8), `EC PRIVATE KEY` (SEC1, P-256 only) or `RSA PRIVATE KEY` (PKCS#1)
    /// block.
    /// Other blocks are ignored. The error names what is wrong (see [`IdentityError`]),
    /// including a key that does not match the certificate.
    pub fn from_pem(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, IdentityError> {
        let chain = CertificateDer::pem_slice_iter(cert_chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| IdentityError::Pem(format!("{e:?}")))?;
        if contains(key_pem, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            return Err(IdentityError::UnsupportedKeyType(
                "encrypted PKCS#8 key (store it unencrypted: `openssl pkcs8 -topk8 -nocrypt`)"
                    .to_string(),
            ));
        }
        let key = match PrivateKeyDer::from_pem_slice(key_pem) {
            Ok(key) => key,
            Err(pem::Error::NoItemsFound) => return Err(IdentityError::NoKey),
            Err(e) => return Err(IdentityError::Pem(format!("{e:?}"))),
        };
        let (key_format, key_der) = match key {
            PrivateKeyDer::Pkcs8(key) => (KeyFormat::Pkcs8, key.secret_pkcs8_der().to_vec()),
            PrivateKeyDer::Sec1(key) => (KeyFormat::Pkcs8, sec1_to_pkcs8(key.secret_sec1_der())?),
            PrivateKeyDer::Pkcs1(key) => (KeyFormat::Pkcs1, key.secret_pkcs1_der().to_vec()),
            _ => {
                return Err(IdentityError::UnsupportedKeyType(
                    "unknown key encoding".to_string(),
                ));
            }
        };
        Self::validated(chain, key_format, key_der)
    }

    /// A new P-256 key and a self-signed certificate for `names`: valid from
    /// `now_unix_s` − 1 day for `valid_days` days (so a clock slightly behind the client's
    /// still works), subject CN = the first name, subjectAltName = all names (one that parses
    /// as an IPv4 address as an iPAddress, the others as dNSName; RFC 5280 §4.2.1.6),
    /// BasicConstraints CA:false, KeyUsage digitalSignature, ExtendedKeyUsage serverAuth, a
    /// random 127-bit serial. Errors if `names` is empty or a name is not ASCII.
    pub fn generate_self_signed(
        now_unix_s: u64,
        valid_days: u32,
        names: &[&str],
    ) -> Result<Self, IdentityError> {
        let generated = certgen::generate(now_unix_s, valid_days, names)?;
        Self::validated(
            alloc::vec![CertificateDer::from(generated.cert_der)],
            KeyFormat::Pkcs8,
            generated.key_pkcs8_der,
        )
    }

    /// SHA-256 of the end-entity certificate's DER: what
    /// `openssl x509 -noout -fingerprint -sha256` prints.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint(Sha256::digest(self.certificate_der()).into())
    }

    /// The end-entity certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        self.chain.first().map_or(&[], |cert| cert.as_ref())
    }

    /// The end-entity certificate as PEM text (RFC 7468 `CERTIFICATE`), e.g. to show on the
    /// console or write to a file for `curl --cacert`.
    pub fn certificate_pem(&self) -> String {
        certificate_pem(self.certificate_der())
    }

    /// A compact self-describing encoding for persistence (e.g. in a UEFI variable):
    /// `"TLSID1"`, the number of certificates (u16), each certificate as u32 length + DER, the
    /// key encoding (u8: 1 PKCS#8, 3 PKCS#1), u32 length + key DER, then the SHA-256
    /// of everything before it. All integers big-endian. The bytes contain the private key.
    pub fn to_bytes(&self) -> Vec<u8> {
        let size = MAGIC.len()
            + 2
            + self.chain.iter().map(|c| 4 + c.len()).sum::<usize>()
            + 1
            + 4
            + self.key_der.len()
            + CHECKSUM_LEN;
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(MAGIC);
        // The chain length and each item fit: `validated` bounds them.
        out.extend_from_slice(&(self.chain.len() as u16).to_be_bytes());
        for cert in &self.chain {
            out.extend_from_slice(&(cert.len() as u32).to_be_bytes());
            out.extend_from_slice(cert);
        }
        out.push(self.key_format as u8);
        out.extend_from_slice(&(self.key_der.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.key_der);
        let checksum: [u8; CHECKSUM_LEN] = Sha256::digest(&out).into();
        out.extend_from_slice(&checksum);
        out
    }

    /// Decodes [`to_bytes`](Self::to_bytes) output, checking the checksum and validating the
    /// identity as [`from_pem`](Self::from_pem) does.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
        let Some(body_len) = bytes.len().checked_sub(CHECKSUM_LEN) else {
            return Err(IdentityError::Encoding("too short"));
        };
        let (body, checksum) = bytes.split_at(body_len);
        let expected: [u8; CHECKSUM_LEN] = Sha256::digest(body).into();
        if checksum != expected {
            return Err(IdentityError::Encoding("checksum mismatch"));
        }
        let mut reader = Reader(body);
        if reader.take(MAGIC.len())? != MAGIC {
            return Err(IdentityError::Encoding("not an identity (bad magic)"));
        }
        let count = u16::from_be_bytes(reader.array()?);
        let mut chain = Vec::with_capacity(usize::from(count).min(16));
        for _ in 0..count {
            let len = u32::from_be_bytes(reader.array()?) as usize;
            chain.push(CertificateDer::from(reader.take(len)?.to_vec()));
        }
        let [tag] = reader.array()?;
        let key_format =
            KeyFormat::from_tag(tag).ok_or(IdentityError::Encoding("unknown key encoding"))?;
        let len = u32::from_be_bytes(reader.array()?) as usize;
        let key_der = reader.take(len)?.to_vec();
        if !reader.0.is_empty() {
            return Err(IdentityError::Encoding("trailing bytes"));
        }
        Self::validated(chain, key_format, key_der)
    }

    /// The end-entity certificate's notAfter as Unix seconds (to warn or regenerate when it
    /// has expired); `None` if it does not parse.
    pub fn not_after_unix_s(&self) -> Option<u64> {
        certgen::not_after_unix_s(self.certificate_der())
    }

    /// The certificate chain, end-entity first.
    pub(crate) fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The private key in its original encoding.
    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        match self.key_format {
            KeyFormat::Pkcs8 => PrivatePkcs8KeyDer::from(self.key_der.clone()).into(),
            KeyFormat::Pkcs1 => PrivatePkcs1KeyDer::from(self.key_der.clone()).into(),
        }
    }

    /// Builds an identity after checking it (see the module documentation).
    fn validated(
        chain: Vec<CertificateDer<'static>>,
        key_format: KeyFormat,
        key_der: Vec<u8>,
    ) -> Result<Self, IdentityError> {
        let Some(end_entity) = chain.first() else {
            return Err(IdentityError::NoCertificate);
        };
        // Bounds that keep `to_bytes` lossless (u16 count, u32 lengths).
        if chain.len() > usize::from(u16::MAX) {
            return Err(IdentityError::CertificateUnparseable {
                index: usize::from(u16::MAX),
                reason: "chain too long".to_string(),
            });
        }
        for (index, cert) in chain.iter().enumerate() {
            let parsed = u32::try_from(cert.len())
                .map_err(|_| "too large".to_string())
                .and_then(|_| x509_cert::Certificate::from_der(cert).map_err(|e| e.to_string()));
            if let Err(reason) = parsed {
                return Err(IdentityError::CertificateUnparseable { index, reason });
            }
        }
        let end_entity = webpki::EndEntityCert::try_from(end_entity).map_err(|e| {
            IdentityError::CertificateUnparseable {
                index: 0,
                reason: format!("rejected by webpki: {e:?}"),
            }
        })?;
        if u32::try_from(key_der.len()).is_err() {
            return Err(IdentityError::KeyUnparseable("too large".to_string()));
        }

        let identity = Self {
            chain: Vec::new(),
            key_format,
            key_der,
        };
        if key_format == KeyFormat::Pkcs8 {
            check_pkcs8_algorithm(&identity.key_der)?;
        }
        let provider = config::provider();
        let signing_key = provider
            .key_provider
            .load_private_key(identity.key())
            .map_err(|e| IdentityError::KeyUnparseable(e.to_string()))?;
        let signer = signing_key.choose_scheme(PROBE_SCHEMES).ok_or_else(|| {
            IdentityError::UnsupportedKeyType(format!("{:?}", signing_key.algorithm()))
        })?;
        let signature = signer
            .sign(PROBE_MESSAGE)
            .map_err(|e| IdentityError::KeyUnparseable(e.to_string()))?;
        let scheme = signer.scheme();
        let matches = provider
            .signature_verification_algorithms
            .mapping
            .iter()
            .filter(|(candidate, _)| *candidate == scheme)
            .flat_map(|(_, algorithms)| algorithms.iter())
            .any(|algorithm| {
                end_entity
                    .verify_signature(*algorithm, PROBE_MESSAGE, &signature)
                    .is_ok()
            });
        if !matches {
            return Err(IdentityError::KeyMismatch);
        }
        Ok(Self { chain, ..identity })
    }
}

impl fmt::Debug for TlsIdentity {
    /// Shows the fingerprint and chain length, never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("fingerprint", &self.fingerprint())
            .field("chain_len", &self.chain.len())
            .field("key_format", &self.key_format)
            .finish_non_exhaustive()
    }
}

/// Rejects PKCS#8 keys of algorithms the provider cannot sign with, naming the algorithm.
fn check_pkcs8_algorithm(der: &[u8]) -> Result<(), IdentityError> {
    let info =
        PrivateKeyInfo::try_from(der).map_err(|e| IdentityError::KeyUnparseable(e.to_string()))?;
    let oid = info.algorithm.oid;
    if oid == RSA_ENCRYPTION || oid == ED25519 {
        return Ok(());
    }
    if oid == EC_PUBLIC_KEY {
        return match info.algorithm.parameters_oid() {
            Ok(curve) if curve == SECP256R1 || curve == SECP384R1 => Ok(()),
            Ok(curve) => Err(IdentityError::UnsupportedKeyType(format!(
                "EC key on curve {curve} (supported: P-256, P-384)"
            ))),
            Err(e) => Err(IdentityError::KeyUnparseable(e.to_string())),
        };
    }
    Err(IdentityError::UnsupportedKeyType(format!(
        "PKCS#8 algorithm {oid} (supported: EC P-256/P-384, RSA, Ed25519)"
    )))
}

/// Re-encodes a SEC1 P-256 key as PKCS#8 (the RustCrypto provider loads EC keys as PKCS#8).
fn sec1_to_pkcs8(der: &[u8]) -> Result<Vec<u8>, IdentityError> {
    use p256::pkcs8::EncodePrivateKey;
    let key = p256::SecretKey::from_sec1_der(der).map_err(|_| {
        IdentityError::UnsupportedKeyType(
            "EC PRIVATE KEY that is not a P-256 key (convert it to PKCS#8: `openssl pkcs8 -topk8 -nocrypt`)"
                .to_string(),
        )
    })?;
    let pkcs8 = key
        .to_pkcs8_der()
        .map_err(|e| IdentityError::KeyUnparseable(e.to_string()))?;
    Ok(pkcs8.as_bytes().to_vec())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// Cursor over persisted identity bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], IdentityError> {
        if n > self.0.len() {
            return Err(IdentityError::Encoding("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], IdentityError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

/// SHA-256 fingerprint of a certificate.
///
/// `Display` prints it exactly as `openssl x509 -noout -fingerprint -sha256` does after the
/// `=`: 32 uppercase hex pairs separated by `:` (95 characters), no prefix.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, byte) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// A DER certificate as PEM text (RFC 7468: `CERTIFICATE` label, 64-column base64, LF).
pub fn certificate_pem(der: &[u8]) -> String {
    use x509_cert::der::pem::{LineEnding, encode_string};
    // Only fails for inputs of gigabytes; a certificate is a few hundred bytes.
    encode_string("CERTIFICATE", LineEnding::LF, der).unwrap_or_default()
}

#[cfg(test)]
mod tests;
