//! `[[listeners]]`: addresses, limits, timeouts and certificates.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::Path;

use http::HeaderName;
use toml::Spanned;

use crate::config::raw::*;
use crate::plan::*;
use crate::tls::TlsError;

use super::validator::{Names, Validator};
use crate::config::defaults;

/// hyper needs room for at least one full read buffer.
const MIN_HEADER_BYTES: u64 = 8 * 1024;
const MAX_HEADER_BYTES: u64 = 1024 * 1024;

impl Validator<'_> {
    pub fn listeners(&mut self, raw: Vec<Spanned<RawListener>>) -> Vec<ListenerConfig> {
        let mut names = Names::new("listener");
        let mut addrs: HashMap<SocketAddr, String> = HashMap::new();
        let mut out = Vec::new();
        let plain = raw.iter().any(|l| l.get_ref().tls.is_none());
        for item in raw {
            let l = item.into_inner();
            names.check(self, &l.name);
            // A bad address still leaves the rest of the listener to check.
            let addr = self.socket_addr(&l.listen, "listeners.listen");
            // Port 0 asks for any free port, so two such listeners never clash.
            let taken = match addr {
                Some(addr) if addr.port() != 0 => addrs.insert(addr, l.name.get_ref().clone()),
                _ => None,
            };
            if let (Some(addr), Some(other)) = (addr, taken) {
                self.problem(
                    l.listen.span(),
                    format!("listeners.listen: {addr} is already used by listener `{other}`"),
                );
            }
            let redirect_https = self.redirect_https(&l);
            let tls = l.tls.map(|t| self.tls(t, plain));
            let backlog = l
                .backlog
                .and_then(|b| self.int_in(&b, 1, 65535, "listeners.backlog"))
                .and_then(|b| u32::try_from(b).ok())
                .unwrap_or(defaults::BACKLOG);
            let max_request_body = l
                .max_request_body
                .and_then(|s| self.size(&s, 1, u64::MAX, "listeners.max_request_body"));
            let max_header_bytes = l
                .max_header_bytes
                .and_then(|s| {
                    self.size(
                        &s,
                        MIN_HEADER_BYTES,
                        MAX_HEADER_BYTES,
                        "listeners.max_header_bytes",
                    )
                })
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(defaults::MAX_HEADER_BYTES);
            let header_timeout = self.timeout(
                l.header_timeout.as_ref(),
                "listeners.header_timeout",
                defaults::HEADER_TIMEOUT,
            );
            let keepalive_timeout = self.timeout(
                l.keepalive_timeout.as_ref(),
                "listeners.keepalive_timeout",
                defaults::KEEPALIVE_TIMEOUT,
            );
            let body_timeout = self.timeout(
                l.body_timeout.as_ref(),
                "listeners.body_timeout",
                defaults::BODY_TIMEOUT,
            );
            let trusted_proxies = l
                .trusted_proxies
                .map(|t| self.networks(&t, "listeners.trusted_proxies"));
            let proxy_protocol = l.proxy_protocol.map(|p| ProxyProtocolConfig {
                trusted: self.networks(&p.trusted, "listeners.proxy_protocol.trusted"),
            });
            let max_connections = l
                .max_connections
                .and_then(|n| self.int_in(&n, 1, 1 << 24, "listeners.max_connections"))
                .and_then(|n| usize::try_from(n).ok())
                .and_then(NonZeroUsize::new);
            let Some(addr) = addr else {
                continue;
            };
            out.push(ListenerConfig {
                name: l.name.into_inner(),
                addr,
                tls: tls.flatten(),
                backlog,
                header_timeout,
                keepalive_timeout,
                body_timeout,
                max_request_body,
                max_header_bytes,
                path_encoded_slashes: match l.path_encoded_slashes {
                    None | Some(RawEncodedSlashes::Reject) => EncodedSlashes::Reject,
                    Some(RawEncodedSlashes::Decode) => EncodedSlashes::Decode,
                    Some(RawEncodedSlashes::Keep) => EncodedSlashes::Keep,
                },
                underscores_in_headers: match l.underscores_in_headers {
                    None | Some(RawUnderscores::Drop) => Underscores::Drop,
                    Some(RawUnderscores::Reject) => Underscores::Reject,
                    Some(RawUnderscores::Allow) => Underscores::Allow,
                },
                trusted_proxies,
                proxy_protocol,
                max_connections,
                redirect_https,
            });
        }
        out
    }

    /// `redirect_https` (and its port) on a plain listener.
    fn redirect_https(&mut self, l: &RawListener) -> Option<u16> {
        let port = l
            .redirect_https_port
            .as_ref()
            .and_then(|p| self.int_in(p, 1, 65535, "listeners.redirect_https_port"))
            .and_then(|p| u16::try_from(p).ok());
        let on = l.redirect_https.as_ref().filter(|on| *on.get_ref());
        let Some(on) = on else {
            if let Some(p) = &l.redirect_https_port {
                self.problem(
                    p.span(),
                    "listeners.redirect_https_port: only used with redirect_https = true",
                );
            }
            return None;
        };
        if l.tls.is_some() {
            self.problem(
                on.span(),
                "listeners.redirect_https: this listener speaks TLS already; set it on a plain one",
            );
            return None;
        }
        Some(port.unwrap_or(443))
    }

    /// `[listeners.tls]`; `plain`: whether the cluster has a plain listener,
    /// where ACME proves names by HTTP-01 (else by TLS-ALPN-01).
    pub fn tls(&mut self, raw: Spanned<RawTls>, plain: bool) -> Option<TlsConfig> {
        let span = raw.span();
        let raw = raw.into_inner();
        let session_tickets = raw.session_tickets.unwrap_or(true);
        let min_version = match raw.min_version.as_ref().map(|v| (v, v.get_ref().as_str())) {
            None | Some((_, "1.2")) => TlsVersion::Tls12,
            Some((_, "1.3")) => TlsVersion::Tls13,
            Some((v, other)) => {
                self.problem(v.span(), format!("listeners.tls.min_version: `{other}` is not a TLS version corral speaks, expected \"1.2\" or \"1.3\""));
                TlsVersion::Tls12
            }
        };
        let client_auth = self.client_auth(raw.client_ca, raw.client_subject_header);
        let mut certificates = Vec::new();
        match raw.certificates {
            // Emptied by parsing, which reported why.
            Some(certs) if certs.get_ref().is_empty() => {
                if !self.dropped.elements.contains(&certs.span()) {
                    self.problem(
                        certs.span(),
                        "listeners.tls.certificates: at least one { cert, key } pair is needed",
                    );
                }
                return None;
            }
            Some(certs) => {
                for c in certs.into_inner() {
                    certificates.extend(self.listener_certificate(&c));
                }
            }
            None if raw.acme.is_none() => {
                self.problem(
                    span,
                    "listeners.tls: name certificates = [{ cert, key }, ...], or [listeners.tls.acme] to obtain one",
                );
                return None;
            }
            None => {}
        }
        if let Some(acme) = raw
            .acme
            .as_ref()
            .filter(|_| client_auth.is_some() && !plain)
        {
            self.problem(
                acme.span(),
                "listeners.tls.acme: with no plain listener, names are proven by TLS-ALPN-01, which a listener requiring client certificates (client_ca) cannot answer; add a plain listener (port 80) for HTTP-01",
            );
        }
        // After the files: the first certificate answers clients without SNI.
        certificates.extend(raw.acme.and_then(|a| self.acme(a)));
        (!certificates.is_empty()).then_some(TlsConfig {
            certificates,
            session_tickets,
            min_version,
            client_auth,
        })
    }

    /// `client_ca`, read as upstreams' `ca` is, and the header that
    /// carries the subjects of the certificates it verifies.
    fn client_auth(&mut self, ca: Option<Text>, header: Option<Text>) -> Option<ClientAuth> {
        let subject_header = header.as_ref().and_then(|h| self.subject_header(h));
        let Some(ca) = ca else {
            if let Some(h) = &header {
                self.problem(
                    h.span(),
                    "listeners.tls.client_subject_header: only used with client_ca, the CA bundle that verifies the certificates whose subject it carries",
                );
            }
            return None;
        };
        let path = self.base.join(ca.get_ref());
        let roots = self.ca_bundle(&path, ca.span(), "listeners.tls.client_ca")?;
        // What a worker will build: a bundle webpki cannot use is said
        // here, not found by the first client.
        if let Err(e) = crate::tls::client_verifier(&roots) {
            self.problem(
                ca.span(),
                format!("listeners.tls.client_ca: {}: {e}", path.display()),
            );
            return None;
        }
        Some(ClientAuth {
            ca: path,
            roots,
            subject_header,
        })
    }

    /// A header name for `client_subject_header`, which must be none that
    /// HTTP or corral's own forwarding gives a meaning to.
    fn subject_header(&mut self, raw: &Text) -> Option<HeaderName> {
        const TAKEN: [&str; 14] = [
            "host",
            "content-length",
            "transfer-encoding",
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "upgrade",
            "http2-settings",
            "expect",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
        ];
        let text = raw.get_ref();
        let why = match HeaderName::from_bytes(text.as_bytes()) {
            Ok(name) if !TAKEN.contains(&name.as_str()) => return Some(name),
            Ok(_) => "has a meaning in HTTP or corral's forwarding already",
            Err(_) => "is not a header name",
        };
        self.problem(
            raw.span(),
            format!("listeners.tls.client_subject_header: `{text}` {why}; choose a name such as X-Client-Subject"),
        );
        None
    }

    /// A `[[listeners.tls.certificates]]` entry: the pair, a certificate
    /// whose names and validity the master can show, and its `ocsp` file.
    fn listener_certificate(&mut self, raw: &RawCertificate) -> Option<CertificateConfig> {
        // Read whatever else is wrong, so that all of it is reported at once.
        let ocsp = raw.ocsp.as_ref().map(|o| self.ocsp(o));
        let mut certificate = self.certificate(raw, "listeners.tls")?;
        if let Err(e) = crate::tls::inspect::CertificateFacts::of(&certificate.pem) {
            let path = certificate.cert.display();
            self.problem(
                raw.cert.span(),
                format!("listeners.tls: cannot read certificate {path}: {e}"),
            );
            return None;
        }
        certificate.ocsp = match ocsp {
            Some(None) => return None,
            read => read.flatten(),
        };
        Some(certificate)
    }

    /// `ocsp = FILE`: a DER OCSP response to staple, read once like the
    /// pair. A file not there yet (a fetcher that has not run) is a
    /// warning: the certificate is served without a staple, and the file
    /// watch reads it when it appears. One that cannot be read, or holds no
    /// successful response, is a problem, so a broken renewal keeps the
    /// staple that serves. `None`: a problem was reported.
    fn ocsp(&mut self, raw: &Text) -> Option<OcspStaple> {
        let path = self.base.join(raw.get_ref());
        let why = match std::fs::read(&path) {
            Ok(bytes) => match crate::tls::inspect::ocsp_response(&bytes) {
                Ok(()) => {
                    let response = Some(Der(bytes));
                    return Some(OcspStaple { path, response });
                }
                Err(e) => format!("{} holds no OCSP response to staple: {e}", path.display()),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match path.parent().filter(|folder| !folder.is_dir()) {
                    Some(folder) => format!(
                        "cannot read OCSP response {}: its folder {} does not exist",
                        path.display(),
                        folder.display()
                    ),
                    None => {
                        self.warning(raw.span(), format!("listeners.tls.certificates.ocsp: {} does not exist (yet); the certificate is served without a stapled OCSP response until it does", path.display()));
                        return Some(OcspStaple {
                            path,
                            response: None,
                        });
                    }
                }
            }
            Err(e) => format!("cannot read OCSP response {}: {e}", path.display()),
        };
        self.problem(
            raw.span(),
            format!("listeners.tls.certificates.ocsp: {why}"),
        );
        None
    }

    /// Reads a chain and its key, once: the plan carries these bytes, so
    /// what was checked here is what every worker serves. Both files are
    /// read, so that two unreadable files are two problems reported at once.
    /// `section` names the table in messages.
    pub fn certificate(
        &mut self,
        raw: &RawCertificate,
        section: &str,
    ) -> Option<CertificateConfig> {
        let cert = self.base.join(raw.cert.get_ref());
        let key = self.base.join(raw.key.get_ref());
        let mut read = |path: &Path, what: &str, span: Range<usize>| {
            let text = std::fs::read(path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    String::from_utf8(bytes)
                        .map_err(|e| format!("not PEM text ({})", e.utf8_error()))
                });
            text.map_err(|e| {
                self.problem(
                    span,
                    format!("{section}: cannot read {what} {}: {e}", path.display()),
                );
            })
            .ok()
        };
        let chain = read(&cert, "certificate", raw.cert.span());
        let key_pem = read(&key, "private key", raw.key.span());
        let pem = CertifiedPem {
            chain: chain?,
            key: key_pem?,
        };
        let (at, why) = match crate::tls::certified_key(&pem) {
            Ok(_) => {
                return Some(CertificateConfig {
                    cert,
                    key,
                    pem,
                    acme: None,
                    ocsp: None,
                });
            }
            Err(e @ TlsError::Chain(_)) => (
                raw.cert.span(),
                format!("cannot read certificate {}: {e}", cert.display()),
            ),
            Err(e @ TlsError::Key(_)) => (
                raw.key.span(),
                format!("cannot read private key {}: {e}", key.display()),
            ),
            Err(e) => (
                raw.key.span(),
                format!(
                    "key {} does not fit certificate {}: {e}",
                    key.display(),
                    cert.display()
                ),
            ),
        };
        self.problem(at, format!("{section}: {why}"));
        None
    }
}

#[cfg(test)]
mod tests {
    use crate::plan::{ClientAuth, Plan};

    /// A TLS listener with `extra` in its `[listeners.tls]`, in a folder
    /// holding its certificate, a CA bundle (`ca.pem`) and a file that is
    /// no bundle (`junk.pem`).
    fn load(extra: &str) -> Result<Plan, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let cert = rcgen::generate_simple_self_signed(vec!["a.test".to_owned()]).expect("cert");
        std::fs::write(dir.path().join("a.pem"), cert.cert.pem()).expect("write");
        std::fs::write(dir.path().join("a.key"), cert.signing_key.serialize_pem()).expect("write");
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_owned()]).expect("ca");
        std::fs::write(dir.path().join("ca.pem"), ca.cert.pem()).expect("write");
        std::fs::write(dir.path().join("junk.pem"), "not pem").expect("write");
        let text = format!(
            "[[listeners]]\nname = \"tls\"\nlisten = \"127.0.0.1:8443\"\n[listeners.tls]\ncertificates = [{{ cert = \"a.pem\", key = \"a.key\" }}]\n{extra}\n[[routes]]\nupstream = \"api\"\n[[upstreams]]\nname = \"api\"\nservers = [{{ addr = \"127.0.0.1:9001\" }}]\n"
        );
        crate::config::from_str(&dir.path().join("corral.toml"), &text)
            .map_err(|e| e.lines().join("\n"))
    }

    fn client_auth(extra: &str) -> Option<ClientAuth> {
        let plan = load(extra).expect("valid");
        plan.listeners[0].tls.clone().expect("tls").client_auth
    }

    #[test]
    fn client_ca_is_read_relative_to_the_config_with_an_optional_header() {
        assert_eq!(client_auth(""), None);
        let auth = client_auth("client_ca = \"ca.pem\"").expect("client auth");
        assert!(auth.ca.ends_with("ca.pem"));
        assert_eq!(auth.roots.0.len(), 1);
        assert_eq!(auth.subject_header, None);
        let auth =
            client_auth("client_ca = \"ca.pem\"\nclient_subject_header = \"X-Client-Subject\"");
        let header = auth.expect("client auth").subject_header.expect("header");
        assert_eq!(header.as_str(), "x-client-subject");
    }

    #[test]
    fn each_mistake_is_said_where_it_was_written() {
        let problem = |extra: &str| load(extra).expect_err("invalid");
        let text = problem("client_subject_header = \"X-Client-Subject\"");
        assert!(
            text.contains(":6:25: listeners.tls.client_subject_header: only used with client_ca"),
            "{text}"
        );
        let text = problem("client_ca = \"junk.pem\"");
        assert!(
            text.contains(":6:13: listeners.tls.client_ca: cannot read "),
            "{text}"
        );
        assert!(text.contains("junk.pem: no certificate in it"), "{text}");
        let text = problem("client_ca = \"missing.pem\"");
        assert!(
            text.contains("listeners.tls.client_ca: cannot read "),
            "{text}"
        );
        for (name, why) in [
            ("X Subject", "is not a header name"),
            (
                "X-Forwarded-For",
                "has a meaning in HTTP or corral's forwarding already",
            ),
            (
                "Host",
                "has a meaning in HTTP or corral's forwarding already",
            ),
        ] {
            let text = problem(&format!(
                "client_ca = \"ca.pem\"\nclient_subject_header = \"{name}\""
            ));
            let expected = format!(":7:25: listeners.tls.client_subject_header: `{name}` {why}");
            assert!(text.contains(&expected), "{expected:?} not in:\n{text}");
        }
    }
}
