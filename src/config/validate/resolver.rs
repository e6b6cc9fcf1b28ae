//! `[resolver]`: the nameservers the master asks for server names, and how
//! long it waits for each answer.

use std::net::{IpAddr, SocketAddr};

use crate::config::raw::RawResolver;
use crate::plan::ResolverConfig;

use super::validator::Validator;
use crate::config::defaults;

impl Validator<'_> {
    pub fn resolver(&mut self, raw: RawResolver) -> ResolverConfig {
        let mut nameservers = Vec::new();
        for text in raw.nameservers.iter().flat_map(|list| list.get_ref()) {
            let t = text.get_ref();
            // The port may be left out, as in resolv.conf.
            let addr = t
                .parse::<SocketAddr>()
                .or_else(|_| t.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
            match addr {
                Ok(addr) => nameservers.push(addr),
                Err(_) => self.problem(text.span(), format!("resolver.nameservers: `{t}` is not a nameserver address, expected IP or IP:PORT such as \"127.0.0.11\" or \"10.96.0.10:53\"")),
            }
        }
        if let Some(list) = raw.nameservers.as_ref().filter(|l| l.get_ref().is_empty()) {
            self.problem(list.span(), "resolver.nameservers: empty, expected at least one; leave the key out for the system's");
        }
        ResolverConfig {
            nameservers,
            timeout: self.timeout(
                raw.timeout.as_ref(),
                "resolver.timeout",
                defaults::RESOLVER_TIMEOUT,
            ),
        }
    }
}
