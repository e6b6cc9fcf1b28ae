//! The worker's memory budget for request heads in flight ([`HeadBudget`]),
//! and which connections are shed beyond it.
//!
//! An HTTP/1.1 connection part-way through a request head holds hyper's
//! buffers until the rest arrives, and a slowloris keeps many such
//! connections for a few bytes each. So a head still incomplete after
//! hyper has read what there was is charged the most it may come to hold,
//! its listener's `max_header_bytes` plus [`HEAD_OVERHEAD`], against the
//! worker's [`HEAD_MEMORY`], until it is complete or its connection closes
//! ([`HeadAccount`]). A head that arrives whole in one read, as a fast
//! client's does, is never charged, so the budget costs fast clients
//! nothing.
//!
//! A head that would take the total past the budget is admitted, and the
//! oldest heads in flight are shed to make room: each is answered `503`
//! with `Connection: close` (see `parse_error`) and its connection closed.
//! The oldest, because a head that has been arriving for long is the
//! likeliest to be a slowloris, while a client served as usual sends its
//! head within a round trip or two; refusing new heads instead would let
//! whoever filled the budget first lock every later client out until the
//! header timeout. HTTP/2 connections are not charged here: their header
//! lists are bounded per stream by the HTTP/2 limits.
//!
//! This module decides and wakes; it does no IO.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Waker};

use super::timeouts::Activity;
use crate::metrics::{Counter, Gauge};

/// What a worker lets the request heads it is receiving hold in all. About
/// what a worker uses serving at full speed (docs/performance.md), so a
/// slowloris can at most double a worker's memory; at the default
/// `max_header_bytes` (64 KiB) it admits about 400 heads in flight at once,
/// far more than clients that are not attacking keep part-sent.
pub const HEAD_MEMORY: usize = 32 << 20;

/// What a head in flight holds besides its own bytes (which hyper's read
/// buffer keeps, up to `max_header_bytes`): hyper's 8 KiB write buffer, the
/// sniffed first read (4 KiB) and the connection's state.
pub const HEAD_OVERHEAD: usize = 16 << 10;

/// The request heads in flight in one worker, oldest first.
#[derive(Debug)]
pub struct HeadBudget {
    limit: usize,
    held: Mutex<Held>,
    /// The bytes charged now.
    charged: Gauge,
}

#[derive(Debug, Default)]
struct Held {
    bytes: usize,
    /// Tickets are handed out in order, so the first is the oldest head.
    next: u64,
    heads: BTreeMap<u64, Head>,
}

/// A head in flight: what it is charged, and how to shed it.
#[derive(Debug)]
struct Head {
    charge: usize,
    activity: Arc<Activity>,
    /// The connection's task, woken to answer and close once shed.
    task: Waker,
    /// Its listener's count of shed connections.
    shed: Counter,
}

impl HeadBudget {
    /// A budget of [`HEAD_MEMORY`], reporting what it holds to `charged`.
    pub fn new(charged: Gauge) -> Arc<Self> {
        Self::with_limit(HEAD_MEMORY, charged)
    }

    fn with_limit(limit: usize, charged: Gauge) -> Arc<Self> {
        Arc::new(Self {
            limit,
            held: Mutex::new(Held::default()),
            charged,
        })
    }

    /// The map guards no invariant a panic could break halfway.
    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Charges `head`, shedding the oldest heads while the total would pass
    /// the limit; its ticket.
    fn admit(&self, head: Head) -> u64 {
        let charge = head.charge;
        let mut shed = Vec::new();
        let ticket = {
            let mut held = self.held();
            while held.bytes + charge > self.limit {
                let Some((_, oldest)) = held.heads.pop_first() else {
                    break;
                };
                held.bytes -= oldest.charge;
                shed.push(oldest);
            }
            held.bytes += charge;
            let ticket = held.next;
            held.next += 1;
            held.heads.insert(ticket, head);
            ticket
        };
        self.charged.add(charge as u64);
        for head in shed {
            self.charged.sub(head.charge as u64);
            head.activity.request_shed();
            head.shed.add(1);
            head.task.wake();
        }
        ticket
    }

    /// Releases the head of `ticket`, unless it was shed already.
    fn release(&self, ticket: u64) {
        let released = {
            let mut held = self.held();
            let head = held.heads.remove(&ticket);
            if let Some(head) = &head {
                held.bytes -= head.charge;
            }
            head
        };
        if let Some(head) = released {
            self.charged.sub(head.charge as u64);
        }
    }
}

/// One HTTP/1.1 connection's account with the budget: its head in flight,
/// if one is charged. Dropping it releases the head.
#[derive(Debug)]
pub struct HeadAccount {
    budget: Arc<HeadBudget>,
    charge: usize,
    shed: Counter,
    ticket: Option<u64>,
}

impl HeadAccount {
    /// An account for a connection of a listener with `max_header_bytes`;
    /// a shed is counted in `shed`.
    pub fn new(budget: Arc<HeadBudget>, max_header_bytes: usize, shed: Counter) -> Self {
        Self {
            budget,
            charge: max_header_bytes + HEAD_OVERHEAD,
            shed,
            ticket: None,
        }
    }

    /// To be called each time the connection's HTTP state has been polled
    /// (in its task, whose waker `cx` holds): charges a head still
    /// arriving, and releases one that is complete.
    pub fn settle(&mut self, activity: &Arc<Activity>, cx: &Context<'_>) {
        match (self.ticket, activity.reading_head()) {
            (None, true) => {
                self.ticket = Some(self.budget.admit(Head {
                    charge: self.charge,
                    activity: activity.clone(),
                    task: cx.waker().clone(),
                    shed: self.shed.clone(),
                }));
            }
            (Some(ticket), false) => {
                self.budget.release(ticket);
                self.ticket = None;
            }
            _ => {}
        }
    }
}

impl Drop for HeadAccount {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket {
            self.budget.release(ticket);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Wake;

    use super::*;
    use crate::metrics::{Family, Recorder};

    /// A task waker that notes being woken.
    #[derive(Default)]
    struct Noted(std::sync::atomic::AtomicBool);

    impl Wake for Noted {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    struct Connection {
        activity: Arc<Activity>,
        account: HeadAccount,
        woken: Arc<Noted>,
    }

    impl Connection {
        fn settle(&mut self) {
            let waker = Waker::from(self.woken.clone());
            self.account
                .settle(&self.activity, &Context::from_waker(&waker));
        }

        fn shed(&self) -> bool {
            self.activity.shed_requested()
                && self.woken.0.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    /// A budget for `heads` heads of 8 KiB, and its gauge.
    fn budget(heads: usize) -> (Arc<HeadBudget>, Arc<Recorder>) {
        let recorder = Recorder::private().unwrap();
        let gauge = recorder.gauge(Family::RequestHeadsBytes, &["0"]);
        let limit = heads * (8192 + HEAD_OVERHEAD);
        (HeadBudget::with_limit(limit, gauge), recorder)
    }

    fn connection(budget: &Arc<HeadBudget>, recorder: &Arc<Recorder>) -> Connection {
        let shed = recorder.counter(Family::ConnectionsShed, &["public"]);
        Connection {
            activity: Activity::new(Arc::default()),
            account: HeadAccount::new(budget.clone(), 8192, shed),
            woken: Arc::default(),
        }
    }

    fn held(budget: &HeadBudget) -> usize {
        budget.held().bytes
    }

    #[test]
    fn past_the_budget_the_oldest_heads_are_shed() {
        let (budget, recorder) = budget(2);
        let mut conns: Vec<Connection> = (0..4).map(|_| connection(&budget, &recorder)).collect();
        for c in &mut conns {
            // A new connection owes its first head: it is reading one.
            c.settle();
        }
        let shed: Vec<bool> = conns.iter().map(Connection::shed).collect();
        assert_eq!(shed, [true, true, false, false]);
        assert_eq!(held(&budget), 2 * (8192 + HEAD_OVERHEAD));
    }

    #[test]
    fn a_completed_head_is_released_and_never_shed() {
        let (budget, recorder) = budget(1);
        let mut first = connection(&budget, &recorder);
        first.settle();
        let request = first.activity.begin(false);
        first.settle();
        assert_eq!(held(&budget), 0);
        let mut second = connection(&budget, &recorder);
        second.settle();
        assert!(!first.shed());
        drop(request);
        // Idle between requests: nothing is charged.
        first.settle();
        assert_eq!(held(&budget), 8192 + HEAD_OVERHEAD);
    }

    #[test]
    fn a_closed_connection_gives_back_its_charge() {
        let (budget, recorder) = budget(1);
        let mut c = connection(&budget, &recorder);
        c.settle();
        assert!(held(&budget) > 0);
        drop(c);
        assert_eq!(held(&budget), 0);
    }
}
