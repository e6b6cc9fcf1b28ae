//! ACME challenge answers: what a certificate authority asks a cluster to
//! show while it checks that the cluster controls a name. The master, which
//! orders certificates, sends every worker the [`Challenges`] pending now;
//! a worker keeps them as [`Answers`] beside its snapshots, and answers
//! HTTP-01 (`GET /.well-known/acme-challenge/TOKEN` on a plain listener,
//! RFC 8555 §8.3) and TLS-ALPN-01 (a handshake offering only `acme-tls/1`
//! on a TLS listener, RFC 8737) from them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};

use crate::plan::CertifiedPem;

/// Where HTTP-01 tokens are asked for.
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// The ALPN protocol a TLS-ALPN-01 validation offers, alone.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The challenges pending in the cluster, as the master sends them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenges {
    /// Bumped on every change; a worker confirms the version it answers.
    pub version: u64,
    /// HTTP-01: each token and the key authorization to answer it with.
    pub http: BTreeMap<String, String>,
    /// TLS-ALPN-01: each name (lowercase) and the self-signed certificate,
    /// carrying the acmeIdentifier extension, to present for it.
    pub tls_alpn: BTreeMap<String, CertifiedPem>,
}

/// A worker's copy of the pending challenges, decoded for lookups.
#[derive(Debug, Default)]
pub struct Answers {
    http: HashMap<String, Bytes>,
    tls_alpn: HashMap<String, Arc<CertifiedKey>>,
}

/// The answers a worker's listeners share; swapped whole on each change.
pub type SharedAnswers = Arc<ArcSwap<Answers>>;

impl Answers {
    /// The answers to `challenges`, with their TLS-ALPN-01 certificates
    /// decoded (see [`crate::tls::challenge_keys`]).
    pub fn new(challenges: &Challenges, tls_alpn: HashMap<String, Arc<CertifiedKey>>) -> Self {
        let http = challenges
            .http
            .iter()
            .map(|(token, answer)| (token.clone(), Bytes::from(answer.clone())))
            .collect();
        Self { http, tls_alpn }
    }

    /// The key authorization for an HTTP-01 request to `path`, if `path`
    /// asks for a pending token.
    pub fn http01(&self, path: &str) -> Option<Bytes> {
        let token = path.strip_prefix(HTTP01_PREFIX)?;
        self.http.get(token).cloned()
    }

    /// The certificate that answers a TLS-ALPN-01 validation of `name`.
    pub fn tls_alpn01(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.tls_alpn.get(&name.to_ascii_lowercase()).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http01_answers_only_pending_tokens_under_the_prefix() {
        let challenges = Challenges {
            version: 1,
            http: BTreeMap::from([("tok".to_owned(), "tok.thumb".to_owned())]),
            tls_alpn: BTreeMap::new(),
        };
        let answers = Answers::new(&challenges, HashMap::new());
        assert_eq!(
            answers.http01("/.well-known/acme-challenge/tok").as_deref(),
            Some(&b"tok.thumb"[..])
        );
        assert!(
            answers
                .http01("/.well-known/acme-challenge/other")
                .is_none()
        );
        assert!(answers.http01("/tok").is_none());
    }
}
