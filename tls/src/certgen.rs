//! Self-signed server certificates: a fresh P-256 key and an X.509 v3 certificate
//! (RFC 5280) signed with it (ecdsa-with-SHA256, RFC 5758 §3.2; deterministic ECDSA per
//! RFC 6979).

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::net::Ipv4Addr;
use core::time::Duration;

use p256::ecdsa::signature::Signer;
use p256::ecdsa::{DerSignature, SigningKey};
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::der::asn1::{
    Any, BitString, GeneralizedTime, Ia5String, OctetString, SetOfVec, UtcTime, Utf8StringRef,
};
use x509_cert::der::oid::{AssociatedOid, ObjectIdentifier};
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName,
};
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate, Version};

use crate::{IdentityError, random};

/// ecdsa-with-SHA256 (RFC 5758 §3.2).
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
/// id-at-commonName (RFC 5280 Appendix A.1).
const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
/// id-kp-serverAuth (RFC 5280 §4.2.1.12).
const SERVER_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");
/// 2050-01-01T00:00:00Z: from here on validity times are GeneralizedTime (RFC 5280 §4.1.2.5).
const UTC_TIME_END: u64 = 2_524_608_000;
const DAY_S: u64 = 86_400;

/// A generated certificate and its key.
pub(crate) struct Generated {
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The private key, PKCS#8 DER (RFC 5208).
    pub key_pkcs8_der: Vec<u8>,
}

fn der_error(error: x509_cert::der::Error) -> IdentityError {
    IdentityError::Generation(error.to_string())
}

/// Generates the key and certificate described at
/// [`TlsIdentity::generate_self_signed`](crate::TlsIdentity::generate_self_signed).
pub(crate) fn generate(
    now_unix_s: u64,
    valid_days: u32,
    names: &[&str],
) -> Result<Generated, IdentityError> {
    let Some(common_name) = names.first() else {
        return Err(IdentityError::InvalidName(String::new()));
    };
    let sans = names
        .iter()
        .map(|name| general_name(name))
        .collect::<Result<Vec<_>, _>>()?;

    let signing_key = random_signing_key()?;
    let spki_der = signing_key
        .verifying_key()
        .to_public_key_der()
        .map_err(|e| IdentityError::Generation(e.to_string()))?;
    let spki = SubjectPublicKeyInfoOwned::from_der(spki_der.as_bytes()).map_err(der_error)?;

    // Positive, at most 20 octets, non-zero first octet (RFC 5280 §4.1.2.2).
    let mut serial = [0u8; 16];
    random::fill(&mut serial)?;
    serial[0] = (serial[0] & 0x7f) | 0x01;

    let not_before = now_unix_s.saturating_sub(DAY_S);
    let not_after = not_before.saturating_add(u64::from(valid_days) * DAY_S);
    let name = subject(common_name)?;
    let extensions = vec![
        extension(
            BasicConstraints::OID,
            true,
            &BasicConstraints {
                ca: false,
                path_len_constraint: None,
            },
        )?,
        extension(
            KeyUsage::OID,
            true,
            &KeyUsage(KeyUsages::DigitalSignature.into()),
        )?,
        extension(
            ExtendedKeyUsage::OID,
            false,
            &ExtendedKeyUsage(vec![SERVER_AUTH]),
        )?,
        extension(SubjectAltName::OID, false, &SubjectAltName(sans))?,
    ];
    let algorithm = AlgorithmIdentifierOwned {
        oid: ECDSA_WITH_SHA256,
        parameters: None,
    };
    let tbs_certificate = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&serial).map_err(der_error)?,
        signature: algorithm.clone(),
        issuer: name.clone(),
        validity: Validity {
            not_before: time(not_before)?,
            not_after: time(not_after)?,
        },
        subject: name,
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    };
    let tbs_der = tbs_certificate.to_der().map_err(der_error)?;
    let signature: DerSignature = signing_key
        .try_sign(&tbs_der)
        .map_err(|e| IdentityError::Generation(e.to_string()))?;
    let certificate = Certificate {
        tbs_certificate,
        signature_algorithm: algorithm,
        signature: BitString::from_bytes(signature.as_bytes()).map_err(der_error)?,
    };
    Ok(Generated {
        cert_der: certificate.to_der().map_err(der_error)?,
        key_pkcs8_der: signing_key
            .to_pkcs8_der()
            .map_err(|e| IdentityError::Generation(e.to_string()))?
            .as_bytes()
            .to_vec(),
    })
}

/// A P-256 key from 32 random bytes (retried in the negligible case that they are not a
/// valid scalar).
fn random_signing_key() -> Result<SigningKey, IdentityError> {
    for _ in 0..8 {
        let mut scalar = [0u8; 32];
        random::fill(&mut scalar)?;
        let key = SigningKey::from_slice(&scalar);
        scalar.fill(0);
        if let Ok(key) = key {
            return Ok(key);
        }
    }
    Err(IdentityError::Random)
}

/// `CN=<common_name>` as a UTF8String attribute.
fn subject(common_name: &str) -> Result<Name, IdentityError> {
    let value = Utf8StringRef::new(common_name).map_err(der_error)?;
    let attribute = AttributeTypeAndValue {
        oid: COMMON_NAME,
        value: Any::encode_from(&value).map_err(der_error)?,
    };
    let rdn = RelativeDistinguishedName(SetOfVec::try_from(vec![attribute]).map_err(der_error)?);
    Ok(RdnSequence(vec![rdn]))
}

/// An iPAddress SAN for a dotted-quad IPv4 address, a dNSName SAN otherwise
/// (RFC 5280 §4.2.1.6).
fn general_name(name: &str) -> Result<GeneralName, IdentityError> {
    let invalid = || IdentityError::InvalidName(name.to_string());
    if let Ok(address) = name.parse::<Ipv4Addr>() {
        let octets = OctetString::new(address.octets().to_vec()).map_err(|_| invalid())?;
        return Ok(GeneralName::IpAddress(octets));
    }
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid());
    }
    Ok(GeneralName::DnsName(
        Ia5String::new(name).map_err(|_| invalid())?,
    ))
}

/// A validity time: UTCTime before 2050, GeneralizedTime from then on (RFC 5280 §4.1.2.5).
fn time(unix_s: u64) -> Result<Time, IdentityError> {
    let since_epoch = Duration::from_secs(unix_s);
    if unix_s < UTC_TIME_END {
        Ok(Time::UtcTime(
            UtcTime::from_unix_duration(since_epoch).map_err(der_error)?,
        ))
    } else {
        Ok(Time::GeneralTime(
            GeneralizedTime::from_unix_duration(since_epoch).map_err(der_error)?,
        ))
    }
}

fn extension(
    oid: ObjectIdentifier,
    critical: bool,
    value: &impl Encode,
) -> Result<Extension, IdentityError> {
    Ok(Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(value.to_der().map_err(der_error)?).map_err(der_error)?,
    })
}

/// The certificate's notAfter as Unix seconds, or `None` if it does not parse.
pub(crate) fn not_after_unix_s(cert_der: &[u8]) -> Option<u64> {
    let certificate = Certificate::from_der(cert_der).ok()?;
    Some(
        certificate
            .tbs_certificate
            .validity
            .not_after
            .to_unix_duration()
            .as_secs(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_750_000_000;

    fn parse(generated: &Generated) -> Certificate {
        Certificate::from_der(&generated.cert_der).expect("generated certificate parses")
    }

    #[test]
    fn names_become_cn_and_sans() {
        let generated = generate(NOW, 30, &["appliance.local", "10.0.2.15"]).expect("generate");
        let certificate = parse(&generated);
        let tbs = &certificate.tbs_certificate;
        assert_eq!(tbs.subject.to_string(), "CN=appliance.local");
        assert_eq!(tbs.issuer, tbs.subject);
        let extensions = tbs.extensions.as_ref().expect("extensions");
        let san = extensions
            .iter()
            .find(|e| e.extn_id == SubjectAltName::OID)
            .expect("SAN");
        let san = SubjectAltName::from_der(san.extn_value.as_bytes()).expect("SAN parses");
        assert_eq!(san.0.len(), 2);
        assert!(matches!(&san.0[0], GeneralName::DnsName(n) if n.as_str() == "appliance.local"));
        assert!(matches!(&san.0[1], GeneralName::IpAddress(ip) if ip.as_bytes() == [10, 0, 2, 15]));
        assert_eq!(
            tbs.validity.not_before.to_unix_duration().as_secs(),
            NOW - DAY_S
        );
        assert_eq!(
            not_after_unix_s(&generated.cert_der),
            Some(NOW - DAY_S + 30 * DAY_S)
        );
    }

    #[test]
    fn validity_after_2050_uses_generalized_time() {
        let generated = generate(UTC_TIME_END, 1, &["x"]).expect("generate");
        let tbs = parse(&generated).tbs_certificate;
        assert!(matches!(tbs.validity.not_before, Time::UtcTime(_)));
        assert!(matches!(tbs.validity.not_after, Time::GeneralTime(_)));
    }

    #[test]
    fn bad_names_are_rejected() {
        assert_eq!(
            generate(NOW, 1, &[]).err(),
            Some(IdentityError::InvalidName(String::new()))
        );
        assert!(matches!(
            generate(NOW, 1, &["has space"]),
            Err(IdentityError::InvalidName(_))
        ));
        assert!(matches!(
            generate(NOW, 1, &["h\u{e9}"]),
            Err(IdentityError::InvalidName(_))
        ));
    }

    #[test]
    fn serials_differ() {
        let a = parse(&generate(NOW, 1, &["x"]).expect("generate"));
        let b = parse(&generate(NOW, 1, &["x"]).expect("generate"));
        assert_ne!(
            a.tbs_certificate.serial_number,
            b.tbs_certificate.serial_number
        );
    }
}
