//! [`RawConfig`] -> [`Plan`]: meaning, defaults, cross-references, and the
//! certificate files read and checked.
//!
//! Each check records a [`Problem`] at the span of the value at fault and
//! carries on, so one run reports everything wrong with the file. One file
//! per section; `validator.rs` holds the checks of single values they share.

mod acme;
mod admin;
mod listener;
mod reload_guard;
mod resolver;
mod route;
mod runtime;
mod upstream;
mod upstream_tls;
mod validator;

use std::path::Path;

use super::error::Problem;
use super::raw::*;
use crate::plan::*;
pub use acme::issued;
pub use admin::ADMIN_TOKEN_ENV;
use validator::Validator;

/// The plan, and the warnings (see [`Validator::warning`]) found on the way.
pub fn validate(
    path: &Path,
    raw: RawConfig,
    problems: &mut Vec<Problem>,
) -> Option<(Plan, Vec<Problem>)> {
    let mut v = Validator::new(path, problems, raw.dropped);
    let runtime = v.runtime(raw.runtime);
    let admin = raw.admin.and_then(|a| v.admin(&a));
    let access_log = raw.access_log.map(|a| AccessLogConfig {
        target: v.log_target(&a.path),
        format: match a.format {
            None | Some(RawLogFormat::Json) => LogFormat::Json,
            Some(RawLogFormat::Combined) => LogFormat::Combined,
        },
    });
    let listeners = v.listeners(raw.listeners);
    if listeners.is_empty() && v.problems.is_empty() {
        v.problem(
            0..0,
            "no listeners: add a [[listeners]] table with a name and a listen address",
        );
    }
    let cookies: Vec<_> = raw
        .upstreams
        .iter()
        .filter_map(|u| {
            let u = u.get_ref();
            let sticky = u.sticky.as_ref()?;
            Some((u.name.get_ref().clone(), sticky.get_ref().cookie.clone()))
        })
        .collect();
    let upstreams = v.upstreams(raw.upstreams);
    let resolver = raw.resolver.map(|r| v.resolver(r));
    let reload_guard = raw.reload_guard.map(|g| v.reload_guard(g));
    let routes = v.routes(raw.routes, &upstreams);
    v.shared_cookies(&cookies, &routes);
    let plan = Plan {
        runtime,
        admin,
        access_log,
        listeners,
        routes,
        upstreams,
        resolver,
        reload_guard,
        warnings: Vec::new(),
        // The master's to choose; a file only checked needs none.
        sticky_key: None,
        ticket_keys: None,
    };
    Some((plan, v.warnings))
}
