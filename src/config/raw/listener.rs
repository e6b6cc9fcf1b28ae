//! `[[listeners]]` as written: addresses, limits, timeouts and TLS.

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

use super::scalar::{Int, IntOrString, Text};
use super::shapes::*;
use crate::config::defaults;

/// `[[listeners]]`: an address clients connect to.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawListener {
    /// Unique; letters, digits, -, _ and .
    #[schemars(with = "String")]
    pub name: Text,
    /// IP:PORT ("[::1]:8080" for IPv6).
    #[schemars(with = "String")]
    pub listen: Text,
    /// TLS on this listener: certificates picked by SNI, ALPN h2 and http/1.1.
    #[schemars(with = "Option<RawTls>")]
    pub tls: Option<Spanned<RawTls>>,
    /// Accept queue length for the kernel.
    #[schemars(
        with = "Option<i64>",
        range(min = 1, max = 65535),
        extend("default" = defaults::BACKLOG)
    )]
    pub backlog: Option<Int>,
    /// Time for a whole request head (from the start or a later request's first byte) and the TLS handshake.
    #[schemars(
        with = "Option<Duration>",
        extend("default" = defaults::written(defaults::HEADER_TIMEOUT))
    )]
    pub header_timeout: Option<Text>,
    /// How long an idle keep-alive connection waits for a request.
    #[schemars(
        with = "Option<Duration>",
        extend("default" = defaults::written(defaults::KEEPALIVE_TIMEOUT))
    )]
    pub keepalive_timeout: Option<Text>,
    /// Longest pause between reads of a request body (then 408).
    #[schemars(
        with = "Option<Duration>",
        extend("default" = defaults::written(defaults::BODY_TIMEOUT))
    )]
    pub body_timeout: Option<Text>,
    /// Larger bodies get 413 (up front by Content-Length); a chunked one is cut past it. Default: unlimited.
    #[schemars(with = "Option<Size>")]
    pub max_request_body: Option<Spanned<IntOrString>>,
    /// Largest request head, 8 KiB to 1 MiB (HTTP/2: as RFC 9113 §6.5.2 counts), else 431.
    #[schemars(
        with = "Option<Size>",
        extend("default" = defaults::MAX_HEADER_BYTES)
    )]
    pub max_header_bytes: Option<Spanned<IntOrString>>,
    /// What to do with %2F and %5C in a request path.
    #[schemars(extend("default" = "reject"))]
    pub path_encoded_slashes: Option<RawEncodedSlashes>,
    /// What to do with request header names that contain `_`.
    #[schemars(extend("default" = "drop"))]
    pub underscores_in_headers: Option<RawUnderscores>,
    /// CIDRs (or addresses) whose X-Forwarded-* headers are kept; others' are replaced.
    #[schemars(with = "Option<Vec<String>>")]
    pub trusted_proxies: Option<Spanned<Vec<Text>>>,
    /// Clients that must send a PROXY protocol (v1 or v2) header naming the real client.
    pub proxy_protocol: Option<RawProxyProtocol>,
    /// Open connections per worker; at the limit accepting pauses. Default: unlimited.
    #[schemars(with = "Option<i64>", range(min = 1, max = 16777216))]
    pub max_connections: Option<Int>,
    /// On a plain listener: answer every request with a 308 to HTTPS.
    #[schemars(with = "Option<bool>", extend("default" = false))]
    pub redirect_https: Option<Spanned<bool>>,
    /// The port `redirect_https` sends clients to.
    #[schemars(with = "Option<Port>", extend("default" = 443))]
    pub redirect_https_port: Option<Int>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawUnderscores {
    /// Remove such headers before forwarding.
    Drop,
    /// Answer 400.
    Reject,
    /// Forward them as they are.
    Allow,
}

/// `proxy_protocol`: who sends a PROXY protocol header.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawProxyProtocol {
    /// CIDRs (or addresses) that must send a PROXY v1/v2 header; others connect plain.
    #[schemars(with = "Vec<String>")]
    pub trusted: Spanned<Vec<Text>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawEncodedSlashes {
    /// Answer 400.
    Reject,
    /// Decode them (before dot segments are resolved).
    Decode,
    /// Leave them encoded.
    Keep,
}

/// `[listeners.tls]`: certificates by SNI, or one ordered by ACME.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawTls {
    /// Certificates picked by SNI (the first when none matches).
    #[schemars(with = "Option<Vec<RawCertificate>>")]
    pub certificates: Option<Spanned<Vec<RawCertificate>>>,
    /// A certificate corral orders and renews itself by ACME.
    #[schemars(with = "Option<RawAcme>")]
    pub acme: Option<Spanned<RawAcme>>,
    /// Session tickets that any worker can resume.
    #[schemars(extend("default" = true))]
    pub session_tickets: Option<bool>,
    /// The oldest TLS version offered; "1.3": TLS 1.3 only.
    #[schemars(with = "Option<TlsVersion>", extend("default" = "1.2"))]
    pub min_version: Option<Text>,
    /// PEM CA bundle; clients must show a certificate it verifies (mTLS).
    #[schemars(with = "Option<String>")]
    pub client_ca: Option<Text>,
    /// With `client_ca`: a header set to the client certificate's subject (RFC 4514); the client's own is dropped.
    #[schemars(with = "Option<String>")]
    pub client_subject_header: Option<Text>,
}

/// `[listeners.tls.acme]`: a certificate corral obtains and renews itself.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawAcme {
    /// The ACME server's directory URL.
    #[schemars(with = "String")]
    pub directory: Text,
    /// The account's contact address.
    #[schemars(with = "Option<String>")]
    pub email: Option<Text>,
    /// The names the certificate is for.
    #[schemars(with = "Vec<String>")]
    pub domains: Spanned<Vec<Text>>,
    /// PEM CA bundle that a private ACME server's certificate is verified with; default: system roots.
    #[schemars(with = "Option<String>")]
    pub ca: Option<Text>,
    /// Folder for the account and certificates across restarts.
    #[schemars(with = "Option<String>", extend("default" = defaults::ACME_STATE_DIR))]
    pub state_dir: Option<Text>,
}

/// A certificate chain and its key.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawCertificate {
    /// PEM certificate chain file.
    #[schemars(with = "String")]
    pub cert: Text,
    /// PEM private key file.
    #[schemars(with = "String")]
    pub key: Text,
    /// DER OCSP response file to staple (missing: none, and `check` warns).
    #[schemars(with = "Option<String>")]
    pub ocsp: Option<Text>,
}
