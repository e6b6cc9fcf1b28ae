//! What the workers said of the servers they ejected (passive health, see
//! `upstream::eject`): by upstream and server, each worker slot's latest
//! ejection, shown in `/status` while its cool-down lasts and its worker
//! lives.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use crate::upstream::Ejection;

/// One worker's ejection of one server.
#[derive(Debug, Clone, PartialEq)]
pub struct Ejected {
    pub slot: usize,
    pub reason: String,
    pub since: SystemTime,
    pub until: SystemTime,
}

#[derive(Debug, Default)]
pub struct Ejections(Mutex<HashMap<(String, SocketAddr), Vec<Ejected>>>);

impl Ejections {
    /// The table guards no invariant a panic could break halfway.
    fn lock(&self) -> MutexGuard<'_, HashMap<(String, SocketAddr), Vec<Ejected>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that the worker of `slot` ejected a server, now.
    pub fn record(&self, slot: usize, ejection: Ejection) {
        let since = SystemTime::now();
        let entry = Ejected {
            slot,
            reason: ejection.reason,
            since,
            until: since + ejection.cool_down,
        };
        let mut table = self.lock();
        // Ejections are rare: sweeping out the ended ones (of servers a
        // reload or DNS removed, too) costs little here.
        table.retain(|_, all| {
            all.retain(|e| e.until > since);
            !all.is_empty()
        });
        let by_slot = table
            .entry((ejection.upstream, ejection.server))
            .or_default();
        by_slot.retain(|e| e.slot != slot);
        by_slot.push(entry);
    }

    /// Forgets the ejections of the worker of `slot`, which exited.
    pub fn forget(&self, slot: usize) {
        self.lock().retain(|_, all| {
            all.retain(|e| e.slot != slot);
            !all.is_empty()
        });
    }

    /// The ejections of a server that last at `now`, by slot.
    pub fn current(&self, upstream: &str, server: SocketAddr, now: SystemTime) -> Vec<Ejected> {
        let table = self.lock();
        let mut out: Vec<Ejected> = table
            .get(&(upstream.to_owned(), server))
            .map(|all| all.iter().filter(|e| e.until > now).cloned().collect())
            .unwrap_or_default();
        out.sort_by_key(|e| e.slot);
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ejection(reason: &str, seconds: u64) -> Ejection {
        Ejection {
            upstream: "api".to_owned(),
            server: "127.0.0.1:9001".parse().expect("addr"),
            reason: reason.to_owned(),
            cool_down: Duration::from_secs(seconds),
        }
    }

    #[test]
    fn each_slot_keeps_its_latest_ejection_while_it_lasts() {
        let table = Ejections::default();
        let addr = "127.0.0.1:9001".parse().expect("addr");
        table.record(1, ejection("reset", 10));
        table.record(0, ejection("status", 20));
        table.record(1, ejection("timeout", 40));
        let now = SystemTime::now();
        let current = table.current("api", addr, now);
        let seen: Vec<_> = current
            .iter()
            .map(|e| (e.slot, e.reason.as_str()))
            .collect();
        assert_eq!(seen, [(0, "status"), (1, "timeout")]);
        let later = table.current("api", addr, now + Duration::from_secs(30));
        assert_eq!(later.len(), 1);
        assert!(table.current("other", addr, now).is_empty());
    }

    #[test]
    fn a_worker_that_exited_takes_its_ejections_along() {
        let table = Ejections::default();
        let addr = "127.0.0.1:9001".parse().expect("addr");
        table.record(0, ejection("reset", 10));
        table.record(1, ejection("status", 10));
        table.forget(1);
        let current = table.current("api", addr, SystemTime::now());
        let slots: Vec<_> = current.iter().map(|e| e.slot).collect();
        assert_eq!(slots, [0]);
    }
}
