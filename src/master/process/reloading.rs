//! The master's side of a reload: starting one (from the file, or from
//! the text before when the reload guard rolls back), publishing its
//! generation, judging it (`[reload_guard]`), and ending it once its
//! workers confirm it, with the log, counts, `/status` and service manager
//! told.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::Instant;

use super::super::generation::Summary;
use super::super::guard::{Rollback, Verdict};
use super::super::health;
use super::super::reload::{
    self, Pending, Prepared, ReloadError, ReloadRecord, Reloaded, Reply, Trigger,
};
use super::super::sockets;
use super::super::status::timestamp;
use super::{Master, Published};

impl Master {
    /// Starts a reload: reads and checks the file and publishes the next
    /// generation. It is then pending, and ends when its workers confirm
    /// it ([`reload::settled`], then `conclude`); nothing waits for that.
    pub(super) fn reload(&mut self, trigger: Trigger, reply: Option<Reply>) {
        self.start_reload(trigger, reply, None);
    }

    /// [`reload`](Self::reload) from the file, or with `verdict` the reload
    /// guard's, from the text of the generation before.
    pub(super) fn start_reload(
        &mut self,
        trigger: Trigger,
        reply: Option<Reply>,
        verdict: Option<Verdict>,
    ) {
        self.notify.reloading();
        let started = std::time::Instant::now();
        let previous = self.generation.borrow().text.clone();
        let (text, rollback) =
            verdict.map_or((None, None), |v| (Some(v.previous_text), Some(v.rollback)));
        match self.publish(text) {
            Ok(Some((generation, changes))) => self.pending.push_back(Pending {
                trigger,
                started,
                generation: generation.number,
                summary: Summary::of(&generation),
                changes,
                deadline: Instant::now() + reload::CONFIRM_TIMEOUT,
                reply,
                previous_text: rollback.is_none().then_some(previous),
                rollback,
            }),
            Ok(None) => {
                let current = Summary::of(&self.generation.borrow());
                let unchanged = Reloaded {
                    generation: self.generation.borrow().number,
                    changes: Vec::new(),
                    unchanged: true,
                };
                self.end_reload(trigger, started, &current, Ok(unchanged), reply, rollback);
            }
            Err(e) => {
                let current = Summary::of(&self.generation.borrow());
                self.end_reload(trigger, started, &current, Err(e), reply, rollback);
            }
        }
    }

    /// Samples the answers for the reload guard; rolls back a generation
    /// it finds worse.
    pub(super) fn judge(&mut self) {
        let config = self.generation.borrow().plan.reload_guard.clone();
        let answered = self.metrics.workers.answered();
        let Some(verdict) = self.guard.sample(answered, config.as_ref()) else {
            return;
        };
        let r = &verdict.rollback;
        tracing::error!(
            generation = r.from_generation,
            requests = r.requests,
            error_ratio = r.error_ratio,
            previous_error_ratio = r.previous_error_ratio,
            "reload guard: generation {} answers clearly worse than the one before; rolling back (the file is left as it is)",
            r.from_generation
        );
        self.metrics.rollbacks.inc();
        self.start_reload(Trigger::Guard, None, Some(verdict));
    }

    /// Ends a pending reload with its workers' `outcome`.
    pub(super) fn conclude(&mut self, pending: Pending, outcome: Result<(), ReloadError>) {
        let Pending {
            trigger,
            started,
            generation,
            summary,
            changes,
            reply,
            previous_text,
            rollback,
            ..
        } = pending;
        let guard = self.generation.borrow().plan.reload_guard.clone();
        match (&outcome, previous_text, guard) {
            (Ok(()), Some(previous), Some(guard))
                if generation == self.generation.borrow().number =>
            {
                let answered = self.metrics.workers.answered();
                self.guard.watch(generation, previous, &guard, answered);
            }
            (Ok(()), ..) => self.guard.forget(),
            (Err(_), ..) => {}
        }
        let result = outcome.map(|()| Reloaded {
            generation,
            changes,
            unchanged: false,
        });
        // A success says where the generation it confirmed listens; a
        // failure, what serves now.
        let shown = match result {
            Ok(_) => summary,
            Err(_) => Summary::of(&self.generation.borrow()),
        };
        self.end_reload(trigger, started, &shown, result, reply, rollback);
    }

    /// Logs, counts and records how a reload ended, and answers whoever
    /// asked for it (an admin request may have been given up on; the outcome
    /// is in `/status` and the log either way).
    pub(super) fn end_reload(
        &mut self,
        trigger: Trigger,
        started: std::time::Instant,
        shown: &Summary,
        result: Result<Reloaded, ReloadError>,
        reply: Option<Reply>,
        rollback: Option<Rollback>,
    ) {
        let elapsed = started.elapsed();
        let current = self.generation.borrow().number;
        let record = |result, generation, error, changes| ReloadRecord {
            result,
            at: timestamp(SystemTime::now()),
            trigger: trigger.as_str(),
            generation,
            error,
            duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            rolled_back: rollback.is_some(),
            rollback: rollback.clone(),
            changes,
        };
        match &result {
            // Not a reload: no new generation, nothing counted or recorded.
            Ok(done) if done.unchanged => {
                tracing::info!(
                    trigger = trigger.as_str(),
                    generation = done.generation,
                    "config unchanged; nothing to reload"
                );
            }
            Ok(done) => {
                self.metrics.reloads.with_label_values(&["success"]).inc();
                self.metrics.reload_duration.observe(elapsed.as_secs_f64());
                self.metrics
                    .generation
                    .set(i64::try_from(done.generation).unwrap_or(i64::MAX));
                // `/status` first, then the log, so a log reader finds it updated.
                self.admin_backend.record_reload(record(
                    "success",
                    done.generation,
                    None,
                    done.changes.clone(),
                ));
                let changes: String = done.changes.iter().map(|c| format!("\n  {c}")).collect();
                tracing::info!(
                    trigger = trigger.as_str(),
                    generation = done.generation,
                    ?elapsed,
                    "config reloaded{changes}"
                );
            }
            Err(e) => {
                self.metrics.reloads.with_label_values(&["failure"]).inc();
                self.metrics
                    .generation
                    .set(i64::try_from(current).unwrap_or(i64::MAX));
                let error = e.lines().join("\n");
                self.admin_backend.record_reload(record(
                    "failure",
                    current,
                    Some(error.clone()),
                    Vec::new(),
                ));
                tracing::error!(
                    trigger = trigger.as_str(),
                    generation = current,
                    "config reload failed; still serving generation {current}:\n{error}"
                );
            }
        }
        self.notify.reloaded(shown, &result);
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }

    /// Makes the next generation and publishes it to every slot; `None`
    /// when the file and what it names read as the running generation's.
    /// `text`: what to make it from, instead of the file (a rollback).
    pub(super) fn publish(
        &mut self,
        text: Option<String>,
    ) -> Result<Option<Published>, ReloadError> {
        let text = match text {
            Some(text) => text,
            None => reload::read(&self.path, &mut self.last_text)?,
        };
        let current = self.generation.borrow().clone();
        let names = &self.discovery.names;
        let (next, changes) = match reload::prepare(&current, &self.path, text, names)? {
            Prepared::Unchanged => return Ok(None),
            Prepared::Next {
                generation,
                changes,
                admin,
            } => {
                if let Some(to) = admin {
                    self.move_admin(to);
                }
                (Arc::new(generation), changes)
            }
        };
        drop(current);
        let slots = next.plan.runtime.workers.get();
        // Retired before the generation that leaves them out is published,
        // so their supervisors never pass it on as a reload: a retired
        // worker keeps accepting on the sockets it has until it drains, and
        // its slot's relay takes over those sockets.
        self.retire_slots(slots);
        self.generation.send_replace(next.clone());
        // From here on the retired slots' sockets get no new connection;
        // their relays empty what queued there before.
        sockets::steer(&next.sockets);
        self.checker.update(&next.upstreams);
        self.health
            .send_replace(Arc::new(health::health_of(&next.upstreams)));
        self.add_slots(slots);
        self.acme.follow(&next.plan);
        Ok(Some((next, changes)))
    }
}
