//! Which connections a listener holds. At most `max` serve at once, and all the process's
//! inbound connections together stay within the open-file budget. When full, the connection
//! that has been idle the longest is asked to close (as nginx reuses keep-alive connections),
//! so idle and silent connections cannot lock real clients out; only when every connection
//! has a request in flight is the new one refused.
//!
//! This is the accept loop's bookkeeping, apart from the connection driver, because it is the
//! one place that sees every connection of the listener.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::activity::Activity;

/// Inbound connections of every listener in the process.
pub(super) static PROCESS_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

/// How often a listener that keeps refusing connections says so.
pub(super) const REFUSAL_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// The connection table of one listener.
#[derive(Debug)]
pub(super) struct Admission {
    max: usize,
    budget: usize,
    process: &'static AtomicUsize,
    epoch: Instant,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    /// Connections not asked to close.
    serving: usize,
    conns: HashMap<u64, Arc<Activity>>,
}

/// Every connection has a request in flight: the new one was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Refused;

/// An admitted connection's place in the table, until dropped.
#[derive(Debug)]
pub(super) struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    activity: Arc<Activity>,
}

impl Ticket {
    pub(super) fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut table = self.admission.lock();
        table.conns.remove(&self.id);
        // A connection asked to close already left `serving` then.
        if !self.activity.is_closing() {
            table.serving -= 1;
        }
        self.admission.process.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    /// A listener serving at most `max` connections, while the process (counted in
    /// `process`) holds at most `budget`.
    pub(super) fn new(max: usize, budget: usize, process: &'static AtomicUsize) -> Arc<Self> {
        Arc::new(Self {
            max,
            budget,
            process,
            epoch: Instant::now(),
            table: Mutex::new(Table::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // The table stays consistent at every unlock, so a panic elsewhere leaves it usable.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a new connection, asking the longest-idle one to close if the listener or the
    /// process is full.
    pub(super) fn admit(self: &Arc<Self>) -> Result<Ticket, Refused> {
        let mut table = self.lock();
        let full = table.serving >= self.max || self.process.load(Ordering::Acquire) >= self.budget;
        if full {
            // Ties (idle since the same instant) go to the older connection.
            let victim = table
                .conns
                .iter()
                .filter_map(|(id, c)| c.eviction_rank().map(|rank| ((rank, *id), c)))
                .min_by_key(|(rank, _)| *rank)
                .map(|(_, c)| Arc::clone(c))
                .ok_or(Refused)?;
            victim.request_close();
            table.serving -= 1;
        }
        let id = table.next_id;
        table.next_id += 1;
        let activity = Activity::new(self.epoch);
        table.conns.insert(id, Arc::clone(&activity));
        table.serving += 1;
        self.process.fetch_add(1, Ordering::AcqRel);
        Ok(Ticket {
            admission: Arc::clone(self),
            id,
            activity,
        })
    }

    /// Asks every connection to close (shutdown).
    pub(super) fn close_all(&self) {
        let mut table = self.lock();
        for conn in table.conns.values() {
            conn.request_close();
        }
        table.serving = 0;
    }
}

/// Refused connections, reported at most once per interval with how many there were.
#[derive(Debug)]
pub(super) struct RefusalWarnings {
    interval: Duration,
    last: Option<Instant>,
    unreported: u64,
}

impl RefusalWarnings {
    pub(super) fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            unreported: 0,
        }
    }

    /// Counts a refusal at `now`; `Some(n)`: warn now, about `n` refusals.
    pub(super) fn refused(&mut self, now: Instant) -> Option<u64> {
        self.unreported += 1;
        if self.last.is_some_and(|last| now < last + self.interval) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> &'static AtomicUsize {
        Box::leak(Box::new(AtomicUsize::new(0)))
    }

    #[tokio::test(start_paused = true)]
    async fn full_listener_evicts_the_longest_idle() {
        let process = counter();
        let admission = Admission::new(2, usize::MAX, process);
        let first = admission.admit().unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        let second = admission.admit().unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        let third = admission.admit().unwrap();
        assert!(first.activity().is_closing());
        assert!(!second.activity().is_closing());
        // The evicted one still holds its socket until its driver ends.
        assert_eq!(process.load(Ordering::Acquire), 3);
        drop(first);
        assert_eq!(process.load(Ordering::Acquire), 2);
        tokio::time::advance(Duration::from_secs(1)).await;
        let _fourth = admission.admit().unwrap();
        assert!(second.activity().is_closing());
        assert!(!third.activity().is_closing());
    }

    #[tokio::test(start_paused = true)]
    async fn busy_listener_refuses_until_a_request_ends() {
        let admission = Admission::new(2, usize::MAX, counter());
        let a = admission.admit().unwrap();
        let b = admission.admit().unwrap();
        let _busy_a = a.activity().begin_request();
        let busy_b = b.activity().begin_request();
        assert_eq!(admission.admit().unwrap_err(), Refused);
        assert!(!a.activity().is_closing() && !b.activity().is_closing());
        drop(busy_b);
        let _c = admission.admit().unwrap();
        assert!(b.activity().is_closing());
        assert!(!a.activity().is_closing());
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_connection_frees_its_place() {
        let admission = Admission::new(1, usize::MAX, counter());
        let a = admission.admit().unwrap();
        let _busy = a.activity().begin_request();
        assert!(admission.admit().is_err());
        drop(_busy);
        drop(a);
        let b = admission.admit().unwrap();
        assert!(!b.activity().is_closing());
    }

    #[tokio::test(start_paused = true)]
    async fn the_process_budget_counts_every_listener() {
        let process = counter();
        let one = Admission::new(10, 2, process);
        let other = Admission::new(10, 2, process);
        let a = one.admit().unwrap();
        let _busy = a.activity().begin_request();
        let b = other.admit().unwrap();
        let _busy_b = b.activity().begin_request();
        // The process is at its budget and this listener has nothing idle to give up.
        assert!(one.admit().is_err());
        drop(_busy);
        let _c = one.admit().unwrap();
        assert!(a.activity().is_closing());
    }

    #[tokio::test(start_paused = true)]
    async fn close_all_asks_every_connection() {
        let admission = Admission::new(10, usize::MAX, counter());
        let tickets: Vec<_> = (0..3).map(|_| admission.admit().unwrap()).collect();
        let _busy = tickets[0].activity().begin_request();
        admission.close_all();
        assert!(tickets.iter().all(|t| t.activity().is_closing()));
        drop(tickets);
        assert_eq!(admission.lock().serving, 0);
        assert!(admission.lock().conns.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn refusal_warnings_are_rate_limited() {
        let mut warnings = RefusalWarnings::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(warnings.refused(start), Some(1));
        assert_eq!(warnings.refused(start + Duration::from_secs(1)), None);
        assert_eq!(warnings.refused(start + Duration::from_secs(9)), None);
        assert_eq!(warnings.refused(start + Duration::from_secs(10)), Some(3));
        assert_eq!(warnings.refused(start + Duration::from_secs(11)), None);
    }
}
