//! The retry budget a workload's clients share: retries at most a fraction of recent requests
//! (plus a small floor), counted across every client and worker thread of the workload, as
//! Envoy's retry budget holds per cluster. The retry layer ([`crate::outbound::retry`])
//! withdraws from it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A budget of retries relative to requests over a sliding window.
#[derive(Debug)]
pub struct RetryBudget {
    /// Retries allowed per request in the window (0.2: at most 20 % extra load).
    pub ratio: f64,
    /// Retries always allowed per second, however few the requests.
    pub min_per_second: u32,
    /// The window over which requests and retries are counted.
    pub window: Duration,
    events: Mutex<VecDeque<(Instant, bool)>>,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new(0.2, 10, Duration::from_secs(10))
    }
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_second: u32, window: Duration) -> Self {
        Self {
            ratio,
            min_per_second,
            window,
            events: Mutex::new(VecDeque::new()),
        }
    }

    fn prune(&self, events: &mut VecDeque<(Instant, bool)>) {
        let now = Instant::now();
        while events
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > self.window)
        {
            events.pop_front();
        }
    }

    /// Records an original request.
    pub fn deposit(&self) {
        let mut events = self.events.lock().expect("budget lock is never poisoned");
        self.prune(&mut events);
        events.push_back((Instant::now(), false));
    }

    /// Takes one retry from the budget, if there is one.
    pub fn withdraw(&self) -> bool {
        let mut events = self.events.lock().expect("budget lock is never poisoned");
        self.prune(&mut events);
        let requests = events.iter().filter(|(_, retry)| !retry).count() as f64;
        let retries = events.iter().filter(|(_, retry)| *retry).count() as f64;
        let floor = f64::from(self.min_per_second) * self.window.as_secs_f64();
        if retries < (requests * self.ratio).max(floor) {
            events.push_back((Instant::now(), true));
            true
        } else {
            false
        }
    }
}
