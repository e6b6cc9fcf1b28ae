//! `[listeners.tls.acme]`: a certificate the master obtains and renews by
//! ACME. What the state folder holds from earlier runs is read here, like
//! any certificate file; until it holds one, a self-signed placeholder
//! stands in, and the file is not refused for it.

use std::path::{Path, PathBuf};

use toml::Spanned;

use super::validator::Validator;
use crate::config::defaults;
use crate::config::raw::RawAcme;
use crate::plan::{AcmeConfig, CertificateConfig, CertifiedPem};

impl Validator<'_> {
    pub fn acme(&mut self, raw: Spanned<RawAcme>) -> Option<CertificateConfig> {
        let raw = raw.into_inner();
        let before = self.reported();
        let directory = raw.directory.get_ref().clone();
        match directory.parse::<http::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {}
            _ => self.problem(
                raw.directory.span(),
                format!("listeners.tls.acme.directory: `{directory}` is not an https:// URL (RFC 8555 requires HTTPS)"),
            ),
        }
        let email = raw.email.map(|e| {
            let email = e.get_ref().clone();
            if !valid_email(&email) {
                self.problem(
                    e.span(),
                    format!("listeners.tls.acme.email: `{email}` is not an email address"),
                );
            }
            email
        });
        let domains = self.acme_domains(&raw.domains);
        let roots = raw.ca.and_then(|ca| {
            let path = self.base.join(ca.get_ref());
            self.ca_bundle(&path, ca.span(), "listeners.tls.acme.ca")
        });
        let state_dir = raw.state_dir.map_or_else(
            || PathBuf::from(defaults::ACME_STATE_DIR),
            |d| self.base.join(d.get_ref()),
        );
        if self.reported() > before {
            return None;
        }
        let (cert, key) = certificate_files(&state_dir, &domains[0]);
        let (pem, placeholder) = match issued(&cert, &key) {
            Some(pem) => (pem, false),
            None => {
                self.warning(
                    raw.domains.span(),
                    format!(
                        "listeners.tls.acme: no certificate for {} in {} yet; a self-signed placeholder serves until the ACME server issues one",
                        domains.join(", "),
                        state_dir.display()
                    ),
                );
                (self.placeholder(&raw.domains, &domains)?, true)
            }
        };
        let acme = AcmeConfig {
            directory,
            email,
            domains,
            roots,
            state_dir,
            placeholder,
        };
        Some(CertificateConfig {
            cert,
            key,
            pem,
            ocsp: None,
            acme: Some(acme),
        })
    }

    /// The names to order, lowercase, at least one, without wildcards
    /// (which need DNS-01, a challenge corral does not answer).
    fn acme_domains(&mut self, raw: &Spanned<Vec<crate::config::raw::Text>>) -> Vec<String> {
        if raw.get_ref().is_empty() {
            self.problem(
                raw.span(),
                "listeners.tls.acme.domains: at least one name is needed",
            );
        }
        let mut domains = Vec::new();
        for d in raw.get_ref() {
            let name = d.get_ref().to_ascii_lowercase();
            let why = if name.starts_with("*.") {
                Some(
                    "a wildcard needs the DNS-01 challenge, which corral does not answer; list each name",
                )
            } else if name.parse::<std::net::IpAddr>().is_ok()
                || rustls::pki_types::DnsName::try_from(name.as_str()).is_err()
            {
                Some("not a DNS name")
            } else {
                None
            };
            match why {
                Some(why) => self.problem(
                    d.span(),
                    format!("listeners.tls.acme.domains: `{}`: {why}", d.get_ref()),
                ),
                None if domains.contains(&name) => {}
                None => domains.push(name),
            }
        }
        domains
    }

    /// A self-signed certificate for `domains`, so that the listener serves
    /// (browsers warn) until the first issuance.
    fn placeholder(
        &mut self,
        at: &Spanned<Vec<crate::config::raw::Text>>,
        domains: &[String],
    ) -> Option<CertifiedPem> {
        match crate::tls::self_signed(domains) {
            Ok(pem) => Some(pem),
            Err(e) => {
                self.problem(
                    at.span(),
                    format!("listeners.tls.acme: cannot make a placeholder certificate: {e}"),
                );
                None
            }
        }
    }
}

/// The files the issued chain and key of the certificate named `first`
/// are kept in.
pub fn certificate_files(state_dir: &Path, first: &str) -> (PathBuf, PathBuf) {
    let folder = state_dir.join("certificates");
    (
        folder.join(format!("{first}.pem")),
        folder.join(format!("{first}.key")),
    )
}

/// The chain and key issued earlier, if both read and fit each other: what
/// a load serves, and what the master plans the next renewal by.
pub fn issued(cert: &Path, key: &Path) -> Option<CertifiedPem> {
    let pem = CertifiedPem {
        chain: std::fs::read_to_string(cert).ok()?,
        key: std::fs::read_to_string(key).ok()?,
    };
    crate::tls::certified_key(&pem).is_ok().then_some(pem)
}

/// An address ACME servers take as a contact: one `@`, no spaces, nothing
/// a `mailto:` URL would need escaped.
fn valid_email(email: &str) -> bool {
    let mut parts = email.split('@');
    let (Some(user), Some(host), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    !user.is_empty()
        && host.contains('.')
        && email
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, ',' | '?' | '&' | '<' | '>'))
}
