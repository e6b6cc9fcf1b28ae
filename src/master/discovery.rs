//! DNS discovery of upstream servers: the master looks up every server
//! written as `NAME:PORT` (with hickory-resolver, through `[resolver]`'s
//! nameservers or the system's), again every `dns_refresh` or sooner when
//! the answer's TTL runs out (never more often than every second), and
//! makes each address a server of its upstream with the entry's weight.
//!
//! [`Names`] holds the latest answer for each name. A lookup that fails
//! (timeout, SERVFAIL, no nameserver) keeps the last answer and notes the
//! error; one that says the name has no address (NXDOMAIN, no records)
//! is an answer, and its servers go. When an answer changes, [`run`]
//! tells the master's loop, which serves a copy of the generation with
//! the new servers ([`resolve`]); workers keep the state of the servers
//! that stay, and let the ones that went finish their requests.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig as Servers,
};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::lookup_ip::LookupIp;
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{Resolver, TokioResolver};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::generation::Generation;
use crate::metrics::cluster::ClusterMetrics;
use crate::plan::{Plan, ResolverConfig, ServerConfig};

/// The shortest time between two lookups of a name.
const MIN_REFRESH: Duration = Duration::from_secs(1);

/// A name to look up: `host` and the port its servers listen on.
pub type Name = (String, u16);

/// What is known of one name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    /// The addresses of the latest answer, sorted; empty before the first.
    pub addrs: Vec<IpAddr>,
    /// When that answer came; `None` while the name never resolved.
    pub resolved_at: Option<SystemTime>,
    /// The latest lookup's error, and since when lookups fail.
    pub error: Option<(String, SystemTime)>,
}

/// The latest answer for every name, shared by the lookups, the master's
/// generations and `/status`.
#[derive(Debug, Default)]
pub struct Names(Mutex<HashMap<Name, Answer>>);

impl Names {
    /// The table guards no invariant a panic could break halfway.
    fn lock(&self) -> MutexGuard<'_, HashMap<Name, Answer>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, name: &Name) -> Option<Answer> {
        self.lock().get(name).cloned()
    }

    /// Records a lookup's addresses, if it had an answer, and its error,
    /// if any query failed; whether the addresses changed.
    fn record(&self, name: &Name, addrs: Option<&[IpAddr]>, error: Option<&str>) -> bool {
        let mut table = self.lock();
        let answer = table.entry(name.clone()).or_default();
        let now = SystemTime::now();
        let mut changed = false;
        if let Some(addrs) = addrs {
            changed = answer.resolved_at.is_none() || answer.addrs != addrs;
            answer.addrs = addrs.to_vec();
            answer.resolved_at = Some(now);
        }
        answer.error = error.map(|e| {
            let since = answer.error.as_ref().map_or(now, |(_, since)| *since);
            (e.to_owned(), since)
        });
        changed
    }

    /// Forgets the names no upstream has any more.
    fn retain(&self, wanted: &HashMap<Name, Duration>) {
        self.lock().retain(|name, _| wanted.contains_key(name));
    }
}

/// `plan` with each upstream's servers made of its `IP:PORT` entries and
/// the addresses its names have in `names` (an address listed already
/// keeps its first entry).
pub fn resolve(plan: &mut Plan, names: &Names) {
    let table = names.lock();
    for upstream in &mut plan.upstreams {
        if upstream.names.is_empty() {
            continue;
        }
        upstream.servers.retain(|s| s.host.is_none());
        for entry in &upstream.names {
            let key = (entry.host.clone(), entry.port);
            for ip in table.get(&key).map_or(&[][..], |a| &a.addrs) {
                let addr = SocketAddr::new(*ip, entry.port);
                if upstream.servers.iter().all(|s| s.addr != addr) {
                    upstream.servers.push(ServerConfig {
                        addr,
                        weight: entry.weight,
                        host: Some(entry.host.clone()),
                    });
                }
            }
        }
    }
}

/// Logs, per upstream, the servers DNS added and removed from `before`.
pub fn log_changes(before: &Plan, after: &Plan) {
    for (was, now) in before.upstreams.iter().zip(&after.upstreams) {
        let addrs = |u: &crate::plan::UpstreamConfig| -> Vec<SocketAddr> {
            u.servers.iter().map(|s| s.addr).collect()
        };
        let (was, now_addrs) = (addrs(was), addrs(now));
        if was != now_addrs {
            let added: Vec<_> = now_addrs.iter().filter(|a| !was.contains(a)).collect();
            let removed: Vec<_> = was.iter().filter(|a| !now_addrs.contains(a)).collect();
            tracing::info!(upstream = %now.name, ?added, ?removed, "upstream servers changed by DNS");
        }
    }
}

/// The names `plan` has, each with its most frequent refresh.
fn wanted(plan: &Plan) -> HashMap<Name, Duration> {
    let mut out: HashMap<Name, Duration> = HashMap::new();
    for upstream in &plan.upstreams {
        for entry in &upstream.names {
            let every = out
                .entry((entry.host.clone(), entry.port))
                .or_insert(upstream.dns_refresh);
            *every = (*every).min(upstream.dns_refresh);
        }
    }
    out
}

/// A resolver for `config`: its nameservers over UDP (TCP for what does
/// not fit), or the system's.
pub fn resolver(config: Option<&ResolverConfig>) -> Result<TokioResolver, String> {
    let (mut builder, timeout) = match config {
        Some(c) if !c.nameservers.is_empty() => {
            let servers = c
                .nameservers
                .iter()
                .map(|ns| {
                    let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                        .map(|mut c| {
                            c.port = ns.port();
                            c
                        })
                        .to_vec();
                    NameServerConfig::new(ns.ip(), true, connections)
                })
                .collect();
            let servers = Servers::from_name_servers(servers);
            let provider = TokioRuntimeProvider::default();
            (
                Resolver::builder_with_config(servers, provider),
                Some(c.timeout),
            )
        }
        other => (
            TokioResolver::builder_tokio()
                .map_err(|e| format!("cannot read the system's resolver configuration: {e}"))?,
            other.map(|c| c.timeout),
        ),
    };
    let options = builder.options_mut();
    if let Some(timeout) = timeout {
        options.timeout = timeout;
    }
    if config.is_some_and(|c| !c.nameservers.is_empty()) {
        // The nameservers named are the answer, as nginx's `resolver` is.
        options.use_hosts_file = ResolveHosts::Never;
    }
    options.attempts = 2;
    builder.build().map_err(|e| e.to_string())
}

/// An answer to a lookup, or to one of its queries: the addresses, sorted
/// (none for NXDOMAIN or no records), and how long the answer holds; `Err`
/// when none came.
type Part = Result<(Vec<IpAddr>, Option<Duration>), String>;

/// A lookup's outcome: its answer ([`Part`]), and the error of its query
/// that failed while the other was answered.
struct Outcome {
    answer: Part,
    partial: Option<String>,
}

impl Outcome {
    /// No answer, for `why`.
    fn failed(why: String) -> Self {
        Self {
            answer: Err(why),
            partial: None,
        }
    }
}

/// Looks `name` up, A and AAAA apart: when only one of them fails, that
/// family keeps its addresses from `last` (a dual-stack lookup would
/// answer with the other family alone, and drain every server of this
/// one over one lost packet).
async fn lookup(resolver: &TokioResolver, name: &Name, last: &[IpAddr]) -> Outcome {
    // An absolute name: no search domains appended.
    let fqdn = format!("{}.", name.0.trim_end_matches('.'));
    // Each lookup asks again: the refresh, not the cache, decides.
    resolver.clear_cache();
    let (v4, v6) = tokio::join!(
        resolver.ipv4_lookup(fqdn.as_str()),
        resolver.ipv6_lookup(fqdn.as_str())
    );
    let (v4, v6) = (family(v4), family(v6));
    if let (Err(e), Err(_)) = (&v4, &v6) {
        return Outcome::failed(e.clone());
    }
    let mut addrs = BTreeSet::new();
    let (mut ttl, mut partial) = (None, None);
    for (part, v6, query) in [(v4, false, "A"), (v6, true, "AAAA")] {
        match part {
            Ok((found, holds)) => {
                addrs.extend(found);
                ttl = ttl.into_iter().chain(holds).min();
            }
            Err(e) => {
                addrs.extend(last.iter().filter(|ip| ip.is_ipv6() == v6));
                partial = Some(format!(
                    "{query} query failed, its last addresses kept: {e}"
                ));
            }
        }
    }
    let answer = Ok((addrs.into_iter().collect(), ttl));
    Outcome { answer, partial }
}

/// One family's part of a lookup. A TTL of 0 holds for no time (the
/// refresh's floor then applies), not for `dns_refresh`.
fn family(found: Result<Lookup, NetError>) -> Part {
    match found {
        Ok(found) => {
            let ttl = found
                .valid_until()
                .saturating_duration_since(std::time::Instant::now());
            Ok((LookupIp::from(found).iter().collect(), Some(ttl)))
        }
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok((Vec::new(), None)),
        Err(e) => Err(e.to_string()),
    }
}

/// A resolver, and the `[resolver]` it was built for.
type Built = (Option<ResolverConfig>, TokioResolver);

/// When each name is next looked up.
type Due = HashMap<Name, Instant>;

/// Looks up every name of `plan` once, within the resolver's timeout: the
/// first generation then starts with the servers DNS has. The resolver,
/// when there was anything to look up and it could be made, for the
/// lookups that follow, and when they are due.
async fn prime(plan: &Plan, names: &Names, metrics: &ClusterMetrics) -> (Option<Built>, Due) {
    let mut due = Due::new();
    let wanted = wanted(plan);
    if wanted.is_empty() {
        return (None, due);
    }
    let resolver = resolver(plan.resolver.as_ref());
    let using = resolver.as_ref().map_err(String::as_str);
    refresh(using, &wanted, &mut due, names, metrics).await;
    let built = resolver.ok().map(|r| (plan.resolver.clone(), r));
    (built, due)
}

/// Looks up each of `wanted` that `due` says is due (one not in it is)
/// with `resolver`, or fails each with the reason there is none, and
/// notes when each is next due: at its refresh or its answer's TTL if
/// sooner, never within [`MIN_REFRESH`]. Whether any addresses changed.
async fn refresh(
    resolver: Result<&TokioResolver, &str>,
    wanted: &HashMap<Name, Duration>,
    due: &mut Due,
    names: &Names,
    metrics: &ClusterMetrics,
) -> bool {
    let now = Instant::now();
    let ready: Vec<&Name> = wanted
        .keys()
        .filter(|name| due.get(*name).is_none_or(|at| *at <= now))
        .collect();
    let lookups = ready.iter().map(|name| async move {
        let before = names.get(name);
        let outcome = match resolver {
            Ok(r) => lookup(r, name, before.as_ref().map_or(&[], |b| &b.addrs)).await,
            Err(e) => Outcome::failed(format!("no resolver: {e}")),
        };
        note(name, outcome, before, names, metrics)
    });
    let outcomes = futures_util::future::join_all(lookups).await;
    let mut any = false;
    for (name, (ttl, moved)) in ready.into_iter().zip(outcomes) {
        let every = wanted[name];
        let next = ttl.map_or(every, |ttl| ttl.min(every)).max(MIN_REFRESH);
        due.insert(name.clone(), Instant::now() + next);
        any |= moved;
    }
    any
}

/// Records, logs and counts one lookup's `outcome` (`before`, the answer
/// held until then); when it is due again, and whether the addresses
/// changed.
fn note(
    name: &Name,
    outcome: Outcome,
    before: Option<Answer>,
    names: &Names,
    metrics: &ClusterMetrics,
) -> (Option<Duration>, bool) {
    let shown = format!("{}:{}", name.0, name.1);
    let (addrs, error) = match &outcome.answer {
        Ok((addrs, _)) => (Some(addrs.as_slice()), outcome.partial.as_deref()),
        Err(e) => (None, Some(e.as_str())),
    };
    let changed = names.record(name, addrs, error);
    let result = if error.is_some() {
        "failure"
    } else {
        "success"
    };
    metrics
        .dns_lookups
        .with_label_values(&[&shown, result])
        .inc();
    match addrs {
        Some([]) if changed => {
            tracing::warn!(name = %shown, "upstream server name has no address (NXDOMAIN or no records); it has no servers");
        }
        Some(addrs) if changed => {
            tracing::info!(name = %shown, addresses = ?addrs, "upstream server name resolved");
        }
        _ => {}
    }
    let before = before.and_then(|b| b.error);
    match (error, before.as_ref()) {
        (None, Some(_)) => tracing::info!(name = %shown, "DNS lookups succeed again"),
        // Said once per error, not at every refresh.
        (Some(e), before) if before.is_none_or(|(old, _)| old != e) => {
            tracing::warn!(name = %shown, error = %e, "DNS lookup failed; keeping the last answer");
        }
        _ => {}
    }
    (outcome.answer.ok().and_then(|(_, ttl)| ttl), changed)
}

/// Keeps every name of the current generation resolved (with `resolver`
/// while its `[resolver]` stays), and sends on `changed` whenever an
/// answer changes the servers; ends when the generation channel closes.
async fn run(
    mut generation: watch::Receiver<Arc<Generation>>,
    names: Arc<Names>,
    metrics: Arc<ClusterMetrics>,
    changed: mpsc::Sender<()>,
    mut resolver: Option<Built>,
    mut due: Due,
) {
    loop {
        let plan = generation.borrow_and_update().plan.clone();
        let wanted = wanted(&plan);
        names.retain(&wanted);
        due.retain(|name, _| wanted.contains_key(name));
        let stale = resolver
            .as_ref()
            .is_none_or(|(config, _)| *config != plan.resolver);
        // A resolver that cannot be made (no readable resolv.conf) fails
        // each lookup, said and counted as any failure, and is tried
        // again at the next refresh.
        let mut unmade = None;
        if stale && !wanted.is_empty() {
            match self::resolver(plan.resolver.as_ref()) {
                Ok(r) => resolver = Some((plan.resolver.clone(), r)),
                Err(e) => (resolver, unmade) = (None, Some(e)),
            }
        }
        // No resolver and no reason: nothing is wanted, nor looked up.
        let using = resolver
            .as_ref()
            .map(|(_, r)| r)
            .ok_or(unmade.as_deref().unwrap_or_default());
        if refresh(using, &wanted, &mut due, &names, &metrics).await {
            let _ = changed.try_send(());
        }
        let next = due.values().min().copied();
        tokio::select! {
            result = generation.changed() => if result.is_err() { return },
            () = sleep_until(next) => {}
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The master's side of discovery: the answers, and word of their changes.
#[derive(Debug)]
pub struct Discovery {
    pub names: Arc<Names>,
    /// A message whenever an answer changed the servers.
    pub changed: mpsc::Receiver<()>,
    tell: mpsc::Sender<()>,
    /// The resolver the first lookups used, and when the next are due,
    /// until [`follow`](Self::follow) takes them on.
    primed: Option<(Option<Built>, Due)>,
}

impl Discovery {
    /// Looks up the names of `plan` once and gives `plan` their servers.
    pub async fn start(plan: &mut Plan, metrics: &ClusterMetrics) -> Self {
        let names = Arc::new(Names::default());
        let primed = prime(plan, &names, metrics).await;
        resolve(plan, &names);
        // One message says all there is: "look again".
        let (tell, changed) = mpsc::channel(1);
        Self {
            names,
            changed,
            tell,
            primed: Some(primed),
        }
    }

    /// Keeps the names of whatever generation `generation` shows resolved.
    pub fn follow(
        &mut self,
        generation: watch::Receiver<Arc<Generation>>,
        metrics: Arc<ClusterMetrics>,
    ) {
        let (resolver, due) = self.primed.take().unwrap_or_default();
        tokio::spawn(run(
            generation,
            self.names.clone(),
            metrics,
            self.tell.clone(),
            resolver,
            due,
        ));
    }
}

/// What `corral check` says of the names of `plan` that do not resolve
/// now: their upstreams would answer 503 until they do.
pub async fn unresolved(plan: &Plan) -> Vec<String> {
    let wanted = wanted(plan);
    if wanted.is_empty() {
        return Vec::new();
    }
    let resolver = match resolver(plan.resolver.as_ref()) {
        Ok(r) => r,
        Err(e) => return vec![format!("server names cannot be looked up: {e}")],
    };
    let mut names: Vec<&Name> = wanted.keys().collect();
    names.sort();
    let lookups = names.iter().map(|name| lookup(&resolver, name, &[]));
    let outcomes = futures_util::future::join_all(lookups).await;
    names
        .into_iter()
        .zip(outcomes)
        .filter_map(|((host, port), outcome)| {
            let why = match outcome.answer {
                Ok((addrs, _)) if addrs.is_empty() => "it has no address".to_owned(),
                Ok(_) => return None,
                Err(e) => e,
            };
            Some(format!("upstream server {host}:{port} does not resolve ({why}); its upstream answers 503 until it does"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn without_a_resolver_each_lookup_fails_keeps_its_answer_and_comes_again() {
        let (names, metrics) = (Names::default(), ClusterMetrics::new().unwrap());
        let name: Name = ("api.internal".to_owned(), 80);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        names.record(&name, Some(&[ip]), None);
        let wanted = HashMap::from([(name.clone(), Duration::from_secs(5))]);
        let mut due = Due::new();
        let unmade = "cannot read the system's resolver configuration";
        assert!(!refresh(Err(unmade), &wanted, &mut due, &names, &metrics).await);
        let answer = names.get(&name).unwrap();
        assert_eq!(answer.addrs, [ip]);
        assert!(answer.error.unwrap().0.contains(unmade));
        let failures = metrics
            .dns_lookups
            .with_label_values(&["api.internal:80", "failure"]);
        assert_eq!(failures.get(), 1);
        // Due again at the refresh, as any failed lookup.
        assert!(due[&name] > Instant::now() + Duration::from_secs(4));
    }
}
