//! `tls` on an upstream: the server name, the CA bundle (or the system's
//! trust store), a client certificate, and the settings built once with
//! rustls as a worker will build them.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use toml::Spanned;

use crate::config::raw::*;
use crate::plan::*;

use super::validator::Validator;

impl Validator<'_> {
    /// `None` for `tls = false`, or when something in it is at fault.
    pub fn upstream_tls(
        &mut self,
        raw: Spanned<RawUpstreamTls>,
        protocol: Protocol,
    ) -> Option<UpstreamTls> {
        let span = raw.span();
        let table = match raw.into_inner() {
            RawUpstreamTls::On(false) => return None,
            RawUpstreamTls::On(true) => RawUpstreamTlsTable {
                server_name: None,
                ca: None,
                cert: None,
                key: None,
                insecure_skip_verify: None,
            },
            RawUpstreamTls::Table(table) => table,
        };
        let before = self.reported();
        let server_name = table.server_name.and_then(|name| {
            let ok = ServerName::try_from(name.get_ref().as_str()).is_ok();
            if !ok {
                self.problem(
                    name.span(),
                    format!(
                        "upstreams.tls.server_name: `{}` is not a DNS name or an IP address",
                        name.get_ref()
                    ),
                );
            }
            ok.then(|| name.into_inner())
        });
        let insecure_skip_verify = table.insecure_skip_verify.as_ref();
        let skip = insecure_skip_verify.is_some_and(|s| *s.get_ref());
        if let (true, Some(ca), Some(flag)) = (skip, &table.ca, insecure_skip_verify) {
            self.problem(
                ca.span().start..flag.span().end.max(ca.span().end),
                "upstreams.tls: `ca` and `insecure_skip_verify = true` contradict each other; keep one",
            );
        }
        if skip {
            let at = insecure_skip_verify.map_or(span.clone(), Spanned::span);
            self.warning(at, "upstreams.tls.insecure_skip_verify: servers' certificates are not verified; anyone on the path can pose as them");
        }
        let (ca, roots) = match (&table.ca, skip) {
            (_, true) => (None, Certificates::default()),
            (Some(ca), false) => {
                let path = self.base.join(ca.get_ref());
                let roots = self.ca_bundle(&path, ca.span(), "upstreams.tls.ca");
                (Some(path), roots.unwrap_or_default())
            }
            (None, false) => (None, self.system_roots(span.clone())),
        };
        let client = self.client_certificate(table.cert.as_ref(), table.key.as_ref());
        if self.reported() != before {
            return None;
        }
        let tls = UpstreamTls {
            server_name,
            ca,
            roots,
            client,
            insecure_skip_verify: skip,
        };
        // What a worker will build: what rustls refuses here is said with
        // the table's place, not found by the first request.
        if let Err(e) = crate::tls::client::config(&tls, protocol) {
            self.problem(span, format!("upstreams.tls: {e}"));
            return None;
        }
        Some(tls)
    }

    /// The certificates of a PEM bundle, at least one; `key` names it in
    /// messages.
    pub(super) fn ca_bundle(
        &mut self,
        path: &Path,
        at: std::ops::Range<usize>,
        key: &str,
    ) -> Option<Certificates> {
        let read = std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|pem| {
                let certs = CertificateDer::pem_slice_iter(&pem)
                    .map(|c| c.map(|c| c.to_vec()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
                if certs.is_empty() {
                    return Err("no certificate in it".to_owned());
                }
                Ok(Certificates(certs))
            });
        read.map_err(|e| {
            self.problem(at, format!("{key}: cannot read {}: {e}", path.display()));
        })
        .ok()
    }

    /// The system's trust store, as rustls-native-certs finds it (honouring
    /// `SSL_CERT_FILE` and `SSL_CERT_DIR`).
    fn system_roots(&mut self, at: std::ops::Range<usize>) -> Certificates {
        let found = rustls_native_certs::load_native_certs();
        if found.certs.is_empty() {
            let why = found
                .errors
                .first()
                .map_or_else(|| "none found".to_owned(), |e| e.to_string());
            self.problem(
                at,
                format!(
                    "upstreams.tls: no system CA certificates ({why}); name a bundle with `ca`"
                ),
            );
        }
        Certificates(found.certs.iter().map(|c| c.to_vec()).collect())
    }

    /// `cert` and `key` together, or neither.
    fn client_certificate(
        &mut self,
        cert: Option<&Text>,
        key: Option<&Text>,
    ) -> Option<CertificateConfig> {
        match (cert, key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let pair = RawCertificate {
                    cert: cert.clone(),
                    key: key.clone(),
                    ocsp: None,
                };
                self.certificate(&pair, "upstreams.tls")
            }
            (Some(one), None) | (None, Some(one)) => {
                self.problem(
                    one.span(),
                    "upstreams.tls: `cert` and `key` go together: the client certificate needs its key",
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::plan::{Plan, UpstreamTls};

    const BASE: &str = r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:8080"
[[routes]]
upstream = "api"
[[upstreams]]
name = "api"
servers = [{ addr = "127.0.0.1:9001" }]
"#;

    /// BASE with `tls` written as `extra`, in a folder holding a CA
    /// bundle (`ca.pem`) and a client certificate (`client.pem`, `client.key`).
    fn load(extra: &str) -> Result<Plan, Vec<String>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_owned()]).expect("ca");
        std::fs::write(dir.path().join("ca.pem"), ca.cert.pem()).expect("write");
        let client =
            rcgen::generate_simple_self_signed(vec!["client.test".to_owned()]).expect("client");
        std::fs::write(dir.path().join("client.pem"), client.cert.pem()).expect("write");
        std::fs::write(
            dir.path().join("client.key"),
            client.signing_key.serialize_pem(),
        )
        .expect("write");
        std::fs::write(dir.path().join("junk.pem"), "not pem").expect("write");
        let path = dir.path().join("corral.toml");
        crate::config::from_str(&path, &format!("{BASE}{extra}")).map_err(|e| e.lines())
    }

    fn tls(extra: &str) -> Option<UpstreamTls> {
        load(extra).expect("valid").upstreams.remove(0).tls
    }

    fn problems(extra: &str) -> String {
        load(extra).expect_err("invalid").join("\n")
    }

    #[test]
    fn tls_true_trusts_the_system_roots_and_names_no_server() {
        let on = tls("tls = true\n").expect("tls");
        assert!(on.ca.is_none() && on.server_name.is_none() && on.client.is_none());
        assert!(!on.roots.0.is_empty(), "the system's trust store");
        assert!(tls("tls = false\n").is_none());
    }

    #[test]
    fn a_table_reads_the_bundle_and_client_certificate_relative_to_the_config() {
        let tls = tls(
            "[upstreams.tls]\nca = \"ca.pem\"\ncert = \"client.pem\"\nkey = \"client.key\"\nserver_name = \"api.internal\"\n",
        )
        .expect("tls");
        assert_eq!(tls.roots.0.len(), 1);
        assert!(tls.ca.expect("ca").ends_with("ca.pem"));
        assert!(tls.client.expect("client").cert.ends_with("client.pem"));
        assert_eq!(tls.server_name.as_deref(), Some("api.internal"));
        assert!(!tls.insecure_skip_verify);
    }

    #[test]
    fn insecure_skip_verify_is_a_warning_not_an_error() {
        let plan = load("[upstreams.tls]\ninsecure_skip_verify = true\n").expect("valid");
        assert!(
            plan.upstreams[0]
                .tls
                .as_ref()
                .expect("tls")
                .roots
                .0
                .is_empty()
        );
        assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
        assert!(
            plan.warnings[0].contains(
                ":11:24: upstreams.tls.insecure_skip_verify: servers' certificates are not verified"
            ),
            "{:?}",
            plan.warnings
        );
        assert!(load("").expect("valid").warnings.is_empty());
    }

    #[test]
    fn each_mistake_is_said_where_it_was_written() {
        let text = problems(
            "[upstreams.tls]\nca = \"junk.pem\"\ncert = \"client.pem\"\nserver_name = \"a b\"\nsni = \"x\"\n",
        );
        for expected in [
            ":14:1: upstreams.tls: unknown field `sni`",
            ":11:6: upstreams.tls.ca: cannot read ",
            "junk.pem: no certificate in it",
            ":12:8: upstreams.tls: `cert` and `key` go together",
            ":13:15: upstreams.tls.server_name: `a b` is not a DNS name or an IP address",
        ] {
            assert!(text.contains(expected), "{expected:?} not in:\n{text}");
        }
        let text = problems("[upstreams.tls]\nca = \"missing.pem\"\n");
        assert!(text.contains("upstreams.tls.ca: cannot read "), "{text}");
        let text = problems("[upstreams.tls]\nca = \"ca.pem\"\ninsecure_skip_verify = true\n");
        assert!(text.contains("contradict each other"), "{text}");
        let text = problems("tls = \"yes\"\n");
        assert!(text.contains("expected true, false or a table"), "{text}");
    }
}
