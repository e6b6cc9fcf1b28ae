//! What a listener's certificate says about itself (its DNS names, issuer
//! and validity), for `/status` and the expiry metric, and the outline of
//! an OCSP response, for the config check. x509-parser reads the DER; this
//! module only picks out and formats what the master shows. Nothing here
//! reads a file or decides what is served.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::asn1_rs::{Enumerated, FromDer, Sequence};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;

use crate::plan::CertifiedPem;

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("no certificate in the PEM chain")]
    Empty,
    #[error("not an X.509 certificate: {0}")]
    Certificate(String),
}

/// The facts of a chain's first certificate (the one served for its names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFacts {
    /// The DNS names of its subjectAltName, in order.
    pub names: Vec<String>,
    /// Its subject's first common name, if it has one.
    pub common_name: Option<String>,
    /// Its issuer as an RFC 4514 string (`CN=R11,O=Let's Encrypt,C=US`).
    pub issuer: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CertificateFacts {
    /// The facts of `pem`'s first certificate.
    pub fn of(pem: &CertifiedPem) -> Result<Self, InspectError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        let der = CertificateDer::pem_slice_iter(pem.chain.as_bytes())
            .next()
            .ok_or(InspectError::Empty)?
            .map_err(|e| InspectError::Certificate(e.to_string()))?;
        let (_, cert) = X509Certificate::from_der(&der)
            .map_err(|e| InspectError::Certificate(e.to_string()))?;
        Ok(Self::from_certificate(&cert))
    }

    fn from_certificate(cert: &X509Certificate<'_>) -> Self {
        // An unreadable subjectAltName has no names to show; webpki, which
        // picks certificates by SNI, would match none either.
        let names = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::DNSName(name) => Some((*name).to_owned()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let common_name = cert
            .subject()
            .iter_common_name()
            .find_map(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let validity = cert.validity();
        Self {
            names,
            common_name,
            issuer: super::subject::rfc4514(cert.issuer()),
            not_before: time(validity.not_before.timestamp()),
            not_after: time(validity.not_after.timestamp()),
        }
    }

    /// Whether one of its DNS names is `name` (case aside).
    pub fn covers(&self, name: &str) -> bool {
        self.names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    /// What the certificate is called in metrics: its first DNS name, else
    /// its common name, else nothing.
    pub fn label(&self) -> &str {
        self.names
            .first()
            .or(self.common_name.as_ref())
            .map_or("", String::as_str)
    }
}

/// Unix seconds as a time. Certificates dated before 1970 (UTCTime reaches
/// back to 1950) are shown as of 1970: as a start of validity it says the
/// same, and RFC 3339 timestamps here start there.
fn time(unix: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0))
}

/// Unix seconds of `at` (0 before 1970).
pub fn unix_seconds(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[derive(Debug, thiserror::Error)]
pub enum OcspError {
    #[error("the file is empty")]
    Empty,
    #[error("not a DER OCSPResponse (a SEQUENCE starting with its responseStatus)")]
    NotDer,
    #[error("its responseStatus is {0}, not successful: there is nothing to staple")]
    Unsuccessful(&'static str),
}

/// Checks that `der` is one DER OCSPResponse (RFC 6960 §4.2.1: a SEQUENCE
/// of a responseStatus ENUMERATED and the response) whose status is
/// `successful`. What it says of which certificate is for clients to judge,
/// as it is when rustls staples it.
pub fn ocsp_response(der: &[u8]) -> Result<(), OcspError> {
    if der.is_empty() {
        return Err(OcspError::Empty);
    }
    let parsed = Sequence::from_der_and_then(der, Enumerated::from_der);
    let status = match parsed {
        Ok(([], status)) => status.0,
        _ => return Err(OcspError::NotDer),
    };
    match status {
        0 => Ok(()),
        1 => Err(OcspError::Unsuccessful("malformedRequest")),
        2 => Err(OcspError::Unsuccessful("internalError")),
        3 => Err(OcspError::Unsuccessful("tryLater")),
        5 => Err(OcspError::Unsuccessful("sigRequired")),
        6 => Err(OcspError::Unsuccessful("unauthorized")),
        _ => Err(OcspError::Unsuccessful("not one RFC 6960 defines")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_of(params: rcgen::CertificateParams) -> CertifiedPem {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("certificate");
        CertifiedPem {
            chain: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    #[test]
    fn names_issuer_and_validity_come_from_the_first_certificate() {
        let mut params = rcgen::CertificateParams::new(vec![
            "a.example.com".to_owned(),
            "*.example.org".to_owned(),
        ])
        .expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CountryName, "NL");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Corral, Test; \"CA\"");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, " Root #1 ");
        params.not_before = rcgen::date_time_ymd(2026, 1, 2);
        params.not_after = rcgen::date_time_ymd(2027, 3, 4);
        let facts = CertificateFacts::of(&pem_of(params)).expect("facts");
        assert_eq!(facts.names, ["a.example.com", "*.example.org"]);
        assert_eq!(facts.label(), "a.example.com");
        // Self-signed: the issuer is the subject, last RDN first.
        assert_eq!(
            facts.issuer,
            r#"CN=\ Root #1\ ,O=Corral\, Test\; \"CA\",C=NL"#
        );
        assert_eq!(
            facts.not_before,
            humantime::parse_rfc3339("2026-01-02T00:00:00Z").expect("time")
        );
        assert_eq!(
            facts.not_after,
            humantime::parse_rfc3339("2027-03-04T00:00:00Z").expect("time")
        );
        assert_eq!(unix_seconds(facts.not_after), 1_804_118_400);
    }

    #[test]
    fn a_certificate_without_dns_names_is_labelled_by_its_common_name() {
        let mut params = rcgen::CertificateParams::new(Vec::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "internal service");
        let facts = CertificateFacts::of(&pem_of(params)).expect("facts");
        assert!(facts.names.is_empty());
        assert_eq!(facts.label(), "internal service");
    }

    #[test]
    fn an_ocsp_response_is_one_der_sequence_with_a_successful_status() {
        // OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED, ... }
        let successful = [0x30, 0x03, 0x0a, 0x01, 0x00];
        assert!(ocsp_response(&successful).is_ok());
        assert!(matches!(ocsp_response(&[]), Err(OcspError::Empty)));
        assert!(matches!(
            ocsp_response(b"-----BEGIN OCSP RESPONSE-----"),
            Err(OcspError::NotDer)
        ));
        // Trailing bytes, and a SEQUENCE that holds no status.
        assert!(matches!(
            ocsp_response(&[0x30, 0x03, 0x0a, 0x01, 0x00, 0x00]),
            Err(OcspError::NotDer)
        ));
        assert!(matches!(
            ocsp_response(&[0x30, 0x03, 0x02, 0x01, 0x00]),
            Err(OcspError::NotDer)
        ));
        assert!(matches!(
            ocsp_response(&[0x30, 0x03, 0x0a, 0x01, 0x03]),
            Err(OcspError::Unsuccessful("tryLater"))
        ));
    }
}
