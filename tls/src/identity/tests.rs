use std::string::String;
use std::vec::Vec;

use super::*;
use crate::testkit::{NOW_S, identity};

/// PEM of a PKCS#8 key.
fn key_pem(der: &[u8]) -> String {
    use x509_cert::der::pem::{LineEnding, encode_string};
    encode_string("PRIVATE KEY", LineEnding::LF, der).expect("pem")
}

/// PEM text of an identity's certificate and key.
fn pem_pair(identity: &TlsIdentity) -> (String, String) {
    (identity.certificate_pem(), key_pem(&identity.key_der))
}

#[test]
fn from_pem_accepts_matching_chain_and_key() {
    let identity = identity();
    let (cert, key) = pem_pair(identity);
    // A chain of two (the second is only parsed, not verified) with other blocks around.
    let other = TlsIdentity::generate_self_signed(NOW_S, 1, &["ca.example"]).expect("generate");
    let chain = std::format!("junk\n{cert}{}", other.certificate_pem());
    let loaded = TlsIdentity::from_pem(chain.as_bytes(), key.as_bytes()).expect("from_pem");
    assert_eq!(loaded.chain().len(), 2);
    assert_eq!(loaded.fingerprint(), identity.fingerprint());
    assert_eq!(loaded.certificate_der(), identity.certificate_der());
}

#[test]
fn from_pem_accepts_sec1_keys() {
    let identity = identity();
    use p256::pkcs8::DecodePrivateKey;
    let secret = p256::SecretKey::from_pkcs8_der(&identity.key_der).expect("key");
    let sec1 = secret.to_sec1_der().expect("sec1");
    let pem = {
        use x509_cert::der::pem::{LineEnding, encode_string};
        encode_string("EC PRIVATE KEY", LineEnding::LF, &sec1).expect("pem")
    };
    let loaded = TlsIdentity::from_pem(identity.certificate_pem().as_bytes(), pem.as_bytes())
        .expect("SEC1 key");
    // Held as PKCS#8, so it is the same key as the generated one.
    assert_eq!(loaded.key_format, KeyFormat::Pkcs8);
    assert_eq!(loaded.to_bytes(), identity.to_bytes());
}

#[test]
fn from_pem_rejects_a_key_of_another_certificate() {
    let other = TlsIdentity::generate_self_signed(NOW_S, 1, &["other"]).expect("generate");
    let (_, other_key) = pem_pair(&other);
    let result = TlsIdentity::from_pem(
        identity().certificate_pem().as_bytes(),
        other_key.as_bytes(),
    );
    assert_eq!(result.err(), Some(IdentityError::KeyMismatch));
}

#[test]
fn from_pem_names_what_is_missing_or_broken() {
    let (cert, key) = pem_pair(identity());
    assert_eq!(
        TlsIdentity::from_pem(b"garbage", key.as_bytes()).err(),
        Some(IdentityError::NoCertificate)
    );
    assert_eq!(
        TlsIdentity::from_pem(cert.as_bytes(), b"garbage").err(),
        Some(IdentityError::NoKey)
    );
    // Broken base64 inside the armour.
    let broken = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
    assert!(matches!(
        TlsIdentity::from_pem(broken.as_bytes(), key.as_bytes()),
        Err(IdentityError::Pem(_))
    ));
    // Valid base64, not a certificate: the second of the chain.
    let not_cert = "-----BEGIN CERTIFICATE-----\nAAECAw==\n-----END CERTIFICATE-----\n";
    let chain = std::format!("{cert}{not_cert}");
    assert!(matches!(
        TlsIdentity::from_pem(chain.as_bytes(), key.as_bytes()),
        Err(IdentityError::CertificateUnparseable { index: 1, .. })
    ));
    // Valid base64, not a key.
    let not_key = "-----BEGIN PRIVATE KEY-----\nAAECAw==\n-----END PRIVATE KEY-----\n";
    assert!(matches!(
        TlsIdentity::from_pem(cert.as_bytes(), not_key.as_bytes()),
        Err(IdentityError::KeyUnparseable(_))
    ));
    let encrypted =
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAECAw==\n-----END ENCRYPTED PRIVATE KEY-----\n";
    assert!(matches!(
        TlsIdentity::from_pem(cert.as_bytes(), encrypted.as_bytes()),
        Err(IdentityError::UnsupportedKeyType(_))
    ));
}

#[test]
fn from_pem_rejects_unsupported_key_types() {
    // An X25519 PKCS#8 key (RFC 8410 §10.3): key agreement only, cannot sign.
    let x25519 = "-----BEGIN PRIVATE KEY-----\n\
        MC4CAQAwBQYDK2VuBCIEINjbsZIt2E1xVL1mGb8YRIqPRO0ljsKq23KJaq5FKWZx\n\
        -----END PRIVATE KEY-----\n";
    let result = TlsIdentity::from_pem(identity().certificate_pem().as_bytes(), x25519.as_bytes());
    match result {
        Err(IdentityError::UnsupportedKeyType(message)) => {
            assert!(message.contains("1.3.101.110"), "{message}")
        }
        other => panic!("expected UnsupportedKeyType, got {other:?}"),
    }
}

#[test]
fn bytes_roundtrip() {
    let identity = identity();
    let bytes = identity.to_bytes();
    assert!(bytes.starts_with(b"TLSID1"));
    let loaded = TlsIdentity::from_bytes(&bytes).expect("from_bytes");
    assert_eq!(loaded.fingerprint(), identity.fingerprint());
    assert_eq!(loaded.key_der, identity.key_der);
    assert_eq!(loaded.to_bytes(), bytes);
}

#[test]
fn corrupted_bytes_are_rejected() {
    let bytes = identity().to_bytes();
    assert!(TlsIdentity::from_bytes(&[]).is_err());
    assert!(TlsIdentity::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    for index in [0, 7, 20, bytes.len() / 2, bytes.len() - 40, bytes.len() - 1] {
        let mut corrupted = bytes.clone();
        corrupted[index] ^= 0x01;
        assert!(
            TlsIdentity::from_bytes(&corrupted).is_err(),
            "flipped bit at {index} accepted"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(TlsIdentity::from_bytes(&longer).is_err());
}

#[test]
fn bytes_with_a_valid_checksum_are_still_validated() {
    // Re-checksummed bytes whose key belongs to another certificate.
    let other = TlsIdentity::generate_self_signed(NOW_S, 1, &["other"]).expect("generate");
    let swapped = TlsIdentity {
        chain: identity().chain.clone(),
        key_format: KeyFormat::Pkcs8,
        key_der: other.key_der.clone(),
    };
    assert_eq!(
        TlsIdentity::from_bytes(&swapped.to_bytes()).err(),
        Some(IdentityError::KeyMismatch)
    );
    // Bad magic with a valid checksum.
    let mut bytes = identity().to_bytes();
    bytes.truncate(bytes.len() - CHECKSUM_LEN);
    bytes[0] = b'X';
    let checksum: [u8; 32] = Sha256::digest(&bytes).into();
    bytes.extend_from_slice(&checksum);
    assert_eq!(
        TlsIdentity::from_bytes(&bytes).err(),
        Some(IdentityError::Encoding("not an identity (bad magic)"))
    );
}

#[test]
fn fingerprint_prints_like_openssl() {
    let mut bytes = [0u8; 32];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = (index as u8).wrapping_mul(8).wrapping_add(0x0a);
    }
    let text = std::format!("{}", Fingerprint(bytes));
    assert_eq!(text.len(), 95);
    assert!(text.starts_with("0A:12:1A:22:"));
    assert!(text.ends_with(":FA:02"));
    assert!(text.split(':').all(|pair| {
        pair.len() == 2
            && pair
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
    }));
    assert_eq!(
        std::format!("{:?}", Fingerprint(bytes)),
        std::format!("Fingerprint({text})")
    );
    // The identity's fingerprint is the SHA-256 of the certificate DER.
    let expected: [u8; 32] = Sha256::digest(identity().certificate_der()).into();
    assert_eq!(identity().fingerprint(), Fingerprint(expected));
}

#[test]
fn certificate_pem_and_not_after() {
    let pem = identity().certificate_pem();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
    assert!(pem.ends_with("-----END CERTIFICATE-----\n"));
    let parsed: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("parse");
    assert_eq!(parsed[0].as_ref(), identity().certificate_der());
    assert_eq!(
        identity().not_after_unix_s(),
        Some(NOW_S - 86_400 + 30 * 86_400)
    );
    let debug = std::format!("{:?}", identity());
    assert!(debug.contains("fingerprint") && !debug.contains("key_der"));
}
