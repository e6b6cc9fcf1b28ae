//! `[[routes]]`: hosts, prefixes and the upstreams they name.

use std::collections::HashSet;

use toml::Spanned;

use crate::config::raw::*;
use crate::plan::*;

use super::validator::{Names, Validator};

impl Validator<'_> {
    pub fn routes(
        &mut self,
        raw: Vec<Spanned<RawRoute>>,
        upstreams: &[UpstreamConfig],
    ) -> Vec<RouteConfig> {
        let mut seen = HashSet::new();
        let mut names = Names::new("route");
        let mut out = Vec::new();
        for item in raw {
            let span = item.span();
            let r = item.into_inner();
            let host = r.host.as_ref().map(|h| self.host(h));
            let path_prefix = match &r.path_prefix {
                None => Some("/".to_owned()),
                Some(p)
                    if p.get_ref().starts_with('/') && !p.get_ref().contains(['?', '#', ' ']) =>
                {
                    Some(p.get_ref().clone())
                }
                Some(p) => {
                    self.problem(p.span(), format!("routes.path_prefix: `{}` is not a path prefix, expected one starting with / and without ? or #", p.get_ref()));
                    None
                }
            };
            self.upstream_ref(&r.upstream, upstreams);
            if let Some(n) = &r.name {
                names.check(self, n);
            }
            // Only a route whose host and prefix are as written can be
            // compared with the others: a bad or unreadable one reads as the
            // default, and would clash for that reason alone.
            let (host, path_prefix) = match (host, path_prefix) {
                (Some(None), _) | (_, None) => continue,
                _ if self.dropped.key(&span, "host") || self.dropped.key(&span, "path_prefix") => {
                    continue;
                }
                (host, Some(path_prefix)) => (host.flatten(), path_prefix),
            };
            if !seen.insert((host.clone(), path_prefix.clone())) {
                self.problem(span, format!(
                    "routes: a route for host {} and path_prefix `{path_prefix}` is already defined above; it would never match",
                    host.as_ref().map_or("(any)".to_owned(), |h| format!("`{h}`"))
                ));
            }
            let name = match r.name {
                Some(n) => n.into_inner(),
                None => format!(
                    "{}{path_prefix}",
                    host.as_ref().map_or("*".to_owned(), ToString::to_string)
                ),
            };
            out.push(RouteConfig {
                name,
                host,
                path_prefix,
                upstream: r.upstream.into_inner(),
                strip_prefix: r.strip_prefix,
            });
        }
        out
    }

    /// A route's upstream must be defined. One that was written but could
    /// not be read was reported where it is; naming it here is no second
    /// problem. Nor is any name, when an upstream's own name was unreadable:
    /// the route may name that one.
    pub fn upstream_ref(&mut self, name: &Text, upstreams: &[UpstreamConfig]) {
        let wanted = name.get_ref();
        let unreadable = &self.dropped.upstreams;
        if upstreams.iter().any(|u| &u.name == wanted)
            || unreadable
                .iter()
                .any(|u| u.as_ref().is_none_or(|u| u == wanted))
        {
            return;
        }
        let known = upstreams
            .iter()
            .map(|u| &u.name)
            .chain(unreadable.iter().flatten())
            .map(|u| format!("`{u}`"))
            .collect::<Vec<_>>();
        let hint = if known.is_empty() {
            "no upstreams are defined".to_owned()
        } else {
            format!("defined: {}", known.join(", "))
        };
        self.problem(
            name.span(),
            format!("routes.upstream: unknown upstream `{wanted}` ({hint})"),
        );
    }

    pub fn host(&mut self, raw: &Text) -> Option<HostPattern> {
        let text = raw.get_ref().to_ascii_lowercase();
        let (wildcard, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            self.problem(raw.span(), format!(
                "routes.host: `{}` is not a host name, expected a name such as api.example.com or *.example.com (no port)",
                raw.get_ref()
            ));
            return None;
        }
        Some(if wildcard {
            HostPattern::Wildcard(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_owned())
        })
    }
}
