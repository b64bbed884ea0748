//! A credential's request budget: how many requests it may make in a rolling window (an hour,
//! as Bitbucket Cloud counts them), shared by every caller of the credential. The transport
//! asks it before each attempt ([`Budget::admit`]), so the credential never sends more than
//! Bitbucket allows, and tells it what Bitbucket reported (`X-RateLimit-Limit`) or refused (429).
//!
//! Requests have a [`Priority`]: planned work (interval syncs) may use only a share of the
//! budget (80% unless set), so that the rest is always there for what someone asked for
//! (validations, sync requests, webhook refreshes). The caller states the priority of the work
//! it runs with [`Priority::run`]; [`metered`] also counts the requests a piece of work made.
//! No I/O; time is passed in.

use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use http::HeaderMap;

/// Whose work a request is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Priority {
    /// Work the operator planned (an interval sync): it may use the planned share only.
    #[default]
    Planned,
    /// Work someone asked for (a validation, a sync request, a webhook delivery): it may use
    /// the whole budget.
    Asked,
}

/// The work a request belongs to, as the task running it states it.
#[derive(Clone, Default)]
struct Work {
    priority: Priority,
    meter: Option<Arc<AtomicU32>>,
}

tokio::task_local! {
    static WORK: Work;
}

impl Priority {
    /// Runs `work` with this priority: every request it makes (in this task) is admitted as
    /// this priority.
    pub async fn run<F: Future>(self, work: F) -> F::Output {
        let meter = WORK.try_with(|w| w.meter.clone()).ok().flatten();
        WORK.scope(
            Work {
                priority: self,
                meter,
            },
            work,
        )
        .await
    }

    /// The priority of the work the current task runs.
    pub fn current() -> Self {
        WORK.try_with(|w| w.priority).unwrap_or_default()
    }
}

/// Runs `work` with `priority` and counts the requests it sent (each attempt, answered or not).
pub async fn metered<F: Future>(priority: Priority, work: F) -> (F::Output, u32) {
    let meter = Arc::new(AtomicU32::new(0));
    let output = WORK
        .scope(
            Work {
                priority,
                meter: Some(Arc::clone(&meter)),
            },
            work,
        )
        .await;
    (output, meter.load(Ordering::Relaxed))
}

/// Counts one request against the current work's meter, if it has one.
pub(crate) fn count_request() {
    let _ = WORK.try_with(|w| {
        if let Some(meter) = &w.meter {
            meter.fetch_add(1, Ordering::Relaxed);
        }
    });
}

/// A duration as people write it and `parse_duration` reads it: `1h`, `1h15m`, `45s`, in whole
/// seconds (at least `1s`).
pub fn humanize(duration: Duration) -> String {
    let total = duration.as_secs().max(1);
    let (hours, minutes, seconds) = (total / 3600, total / 60 % 60, total % 60);
    let mut text = String::new();
    for (value, unit) in [(hours, "h"), (minutes, "m"), (seconds, "s")] {
        if value > 0 {
            text.push_str(&format!("{value}{unit}"));
        }
    }
    text
}

/// The slots a window is counted in: a request counts until the end of its slot plus the
/// window, so the count errs on the side of fewer requests, never more.
const SLOTS: u32 = 60;

/// Where the budget's size comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// What the credential type allows (Bitbucket Cloud: 1,000 an hour).
    CredentialType,
    /// What Bitbucket reported in `X-RateLimit-Limit`.
    Reported,
    /// Set on the integration.
    Set,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CredentialType => "credential type",
            Self::Reported => "reported by Bitbucket",
            Self::Set => "set on the integration",
        }
    }
}

/// A snapshot of a budget, for status and metrics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Snapshot {
    /// Requests the window allows (`None`: no limit known).
    pub limit: Option<u32>,
    pub source: Source,
    /// Of them, what planned work may use.
    pub planned: Option<u32>,
    /// Requests counted in the current window.
    pub used: u32,
    pub window: Duration,
}

impl Snapshot {
    /// What is left of the window's limit.
    pub fn remaining(&self) -> Option<u32> {
        self.limit.map(|l| l.saturating_sub(self.used))
    }
}

/// One credential's budget. Cheap to share (`Arc`).
pub struct Budget {
    window: Duration,
    epoch: Instant,
    state: Mutex<State>,
}

struct State {
    default: Option<u32>,
    reported: Option<u32>,
    set: Option<u32>,
    /// Of the limit, the share planned work may use, in percent.
    planned_percent: u8,
    /// (slot number, requests) for the slots of the current window, oldest first.
    slots: std::collections::VecDeque<(u64, u32)>,
    /// After a 429, planned work waits until then: Bitbucket counts more than we do (another
    /// client of the same user, or a limit lower than we were told).
    held_until: Option<Instant>,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("snapshot", &self.snapshot(Instant::now()))
            .finish()
    }
}

/// Which budget a client's requests count against. It can be pointed at another budget while
/// the client lives (two integrations found to be one Bitbucket user's come to share one).
pub struct BudgetSlot(Mutex<Arc<Budget>>);

impl BudgetSlot {
    pub fn new(budget: Arc<Budget>) -> Self {
        Self(Mutex::new(budget))
    }

    pub fn get(&self) -> Arc<Budget> {
        Arc::clone(&self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn set(&self, budget: Arc<Budget>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = budget;
    }
}

/// The planned share unless the integration sets another.
pub const DEFAULT_PLANNED_PERCENT: u8 = 80;

/// How long planned work waits after a 429 that named no `Retry-After`.
const HOLD_AFTER_429: Duration = Duration::from_secs(60);

impl Budget {
    /// A budget of `default` requests per `window` (`None`: unlimited until Bitbucket reports
    /// a limit or the integration sets one).
    pub fn new(default: Option<u32>, window: Duration) -> Self {
        Self {
            // Slots of at least 100 ms.
            window: window.max(Duration::from_secs(6)),
            epoch: Instant::now(),
            state: Mutex::new(State {
                default,
                reported: None,
                set: None,
                planned_percent: DEFAULT_PLANNED_PERCENT,
                slots: std::collections::VecDeque::new(),
                held_until: None,
            }),
        }
    }

    /// Applies what the integration sets: its own limit, and the planned share (percent).
    pub fn configure(&self, set: Option<u32>, planned_percent: Option<u8>) {
        let mut state = self.lock();
        state.set = set;
        state.planned_percent = planned_percent
            .unwrap_or(DEFAULT_PLANNED_PERCENT)
            .clamp(1, 100);
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn slot_of(&self, at: Instant) -> u64 {
        let slot = self.window / SLOTS;
        (at.saturating_duration_since(self.epoch).as_nanos() / slot.as_nanos().max(1)) as u64
    }

    /// Admits one request of `priority` now, counting it, or says how long until it could be.
    pub fn admit(&self, priority: Priority, now: Instant) -> Result<(), Duration> {
        let current = self.slot_of(now);
        let mut state = self.lock();
        state.forget_before(current);
        if priority == Priority::Planned
            && let Some(until) = state.held_until.filter(|until| *until > now)
        {
            return Err(until - now);
        }
        if let Some(cap) = state.cap(priority) {
            let used = state.used();
            if used >= cap {
                return Err(self.until_room(&state, used + 1 - cap, now));
            }
        }
        match state.slots.back_mut() {
            Some((slot, count)) if *slot == current => *count += 1,
            _ => state.slots.push_back((current, 1)),
        }
        Ok(())
    }

    /// When slot `number` begins.
    fn slot_start(&self, number: u64) -> Instant {
        self.epoch + self.window / SLOTS * u32::try_from(number).unwrap_or(u32::MAX)
    }

    /// How long until `needed` counted requests have left the window.
    fn until_room(&self, state: &State, needed: u32, now: Instant) -> Duration {
        let mut freed = 0;
        for (number, count) in &state.slots {
            freed += count;
            if freed >= needed {
                // The slot stops counting once a whole window has passed after its end.
                let ends = self.slot_start(number + 1);
                return (ends + self.window).saturating_duration_since(now);
            }
        }
        self.window
    }

    /// Counts in this budget the requests `other` counted (the same credential's, made before
    /// it was known to share this budget).
    pub fn absorb(&self, other: &Budget) {
        if std::ptr::eq(self, other) {
            return;
        }
        let counted: Vec<(Instant, u32)> = (other.lock().slots.iter())
            .map(|(number, count)| (other.slot_start(*number), *count))
            .collect();
        let mut state = self.lock();
        for (at, count) in counted {
            let number = self.slot_of(at);
            // Slots stay in order: an older one goes at the front, a newer at the back.
            match state.slots.iter_mut().find(|(n, _)| *n == number) {
                Some((_, existing)) => *existing += count,
                None => {
                    let index = state.slots.partition_point(|(n, _)| *n < number);
                    state.slots.insert(index, (number, count));
                }
            }
        }
    }

    /// Learns from an answer's headers (Bitbucket sends them to access tokens only):
    /// `X-RateLimit-Limit` is the credential's hourly limit; `X-RateLimit-NearLimit: true`
    /// while this budget's own count is below the planned share means Bitbucket counts more
    /// than we do (another client of the same token), so planned work waits a tenth of the
    /// window. `X-RateLimit-Resource` names the group counted (`api`, the only one called).
    pub fn learn(&self, headers: &HeaderMap, now: Instant) {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let reported = header("x-ratelimit-limit")
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|limit| *limit > 0);
        let near = header("x-ratelimit-nearlimit").is_some_and(|v| v.trim() == "true");
        let current = self.slot_of(now);
        let mut state = self.lock();
        if let Some(reported) = reported {
            state.reported = Some(reported);
        }
        state.forget_before(current);
        if near
            && state
                .cap(Priority::Planned)
                .is_some_and(|cap| state.used() < cap)
        {
            let until = now + self.window / 10;
            state.held_until = Some(state.held_until.map_or(until, |held| held.max(until)));
        }
    }

    /// Bitbucket refused a request (429): planned work waits `retry_after`, or a minute.
    /// A `Retry-After` is Bitbucket's text: at most a window is believed (an hour, where any
    /// request counted has left it).
    pub fn refused(&self, retry_after: Option<Duration>, now: Instant) {
        let hold = retry_after.unwrap_or(HOLD_AFTER_429).min(self.window);
        self.lock().held_until = Some(now + hold);
    }

    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let current = self.slot_of(now);
        let mut state = self.lock();
        state.forget_before(current);
        let (limit, source) = state.limit();
        Snapshot {
            limit,
            source,
            planned: state.cap(Priority::Planned),
            used: state.used(),
            window: self.window,
        }
    }
}

impl State {
    /// Forgets the slots that no longer overlap the window ending in slot `current`.
    fn forget_before(&mut self, current: u64) {
        while self
            .slots
            .front()
            .is_some_and(|(slot, _)| slot + u64::from(SLOTS) < current)
        {
            self.slots.pop_front();
        }
    }

    fn used(&self) -> u32 {
        self.slots.iter().map(|(_, count)| count).sum()
    }

    fn limit(&self) -> (Option<u32>, Source) {
        match (self.set, self.reported, self.default) {
            (Some(set), _, _) => (Some(set), Source::Set),
            (None, Some(reported), _) => (Some(reported), Source::Reported),
            (None, None, default) => (default, Source::CredentialType),
        }
    }

    /// The most requests work of `priority` may have counted in the window.
    fn cap(&self, priority: Priority) -> Option<u32> {
        let (limit, _) = self.limit();
        limit.map(|limit| match priority {
            Priority::Asked => limit,
            Priority::Planned => {
                let planned = u64::from(limit) * u64::from(self.planned_percent) / 100;
                u32::try_from(planned).unwrap_or(limit).max(1)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn planned_work_stops_at_its_share_and_asked_work_gets_the_rest() {
        let budget = Budget::new(Some(10), HOUR);
        let now = Instant::now();
        for _ in 0..8 {
            budget.admit(Priority::Planned, now).unwrap();
        }
        let wait = budget.admit(Priority::Planned, now).unwrap_err();
        assert!(wait > HOUR - Duration::from_secs(1) && wait <= HOUR + HOUR / SLOTS);
        budget.admit(Priority::Asked, now).unwrap();
        budget.admit(Priority::Asked, now).unwrap();
        assert!(budget.admit(Priority::Asked, now).is_err());
        let snapshot = budget.snapshot(now);
        assert_eq!(
            (
                snapshot.limit,
                snapshot.planned,
                snapshot.used,
                snapshot.remaining()
            ),
            (Some(10), Some(8), 10, Some(0))
        );
    }

    #[test]
    fn requests_leave_the_count_a_window_after_their_slot() {
        let budget = Budget::new(Some(2), HOUR);
        let start = Instant::now();
        budget.admit(Priority::Asked, start).unwrap();
        budget.admit(Priority::Asked, start).unwrap();
        let wait = budget.admit(Priority::Asked, start).unwrap_err();
        // Never early: a request counts for at least a whole window.
        assert!(budget.admit(Priority::Asked, start + HOUR).is_err());
        budget.admit(Priority::Asked, start + wait).unwrap();
    }

    #[test]
    fn the_limit_is_what_the_integration_sets_else_what_bitbucket_reports_else_the_default() {
        let budget = Budget::new(Some(1000), HOUR);
        let now = Instant::now();
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-limit", "2500".parse().unwrap());
        budget.learn(&headers, now);
        assert_eq!(budget.snapshot(now).limit, Some(2500));
        assert_eq!(budget.snapshot(now).source, Source::Reported);
        budget.configure(Some(300), Some(50));
        let snapshot = budget.snapshot(now);
        assert_eq!(
            (snapshot.limit, snapshot.planned, snapshot.source),
            (Some(300), Some(150), Source::Set)
        );
        budget.configure(None, None);
        assert_eq!(budget.snapshot(now).planned, Some(2000));
    }

    #[test]
    fn without_a_limit_everything_is_admitted_and_counted() {
        let budget = Budget::new(None, HOUR);
        let now = Instant::now();
        for _ in 0..5000 {
            budget.admit(Priority::Planned, now).unwrap();
        }
        assert_eq!(budget.snapshot(now).used, 5000);
    }

    #[test]
    fn after_a_429_planned_work_waits_and_asked_work_does_not() {
        let budget = Budget::new(Some(1000), HOUR);
        let now = Instant::now();
        budget.refused(Some(Duration::from_secs(30)), now);
        assert_eq!(
            budget.admit(Priority::Planned, now),
            Err(Duration::from_secs(30))
        );
        budget.admit(Priority::Asked, now).unwrap();
        budget
            .admit(Priority::Planned, now + Duration::from_secs(30))
            .unwrap();
        // A Retry-After of centuries is believed for a window at most.
        budget.refused(Some(Duration::MAX), now);
        assert_eq!(budget.admit(Priority::Planned, now), Err(HOUR));
    }

    #[test]
    fn bitbucket_near_its_limit_while_we_count_little_holds_planned_work_a_while() {
        let budget = Budget::new(Some(1000), HOUR);
        let now = Instant::now();
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-nearlimit", "false".parse().unwrap());
        budget.learn(&headers, now);
        budget.admit(Priority::Planned, now).unwrap();
        headers.insert("x-ratelimit-nearlimit", "true".parse().unwrap());
        budget.learn(&headers, now);
        assert_eq!(budget.admit(Priority::Planned, now), Err(HOUR / 10));
        budget.admit(Priority::Asked, now).unwrap();
        budget.admit(Priority::Planned, now + HOUR / 10).unwrap();
    }

    #[test]
    fn a_budget_absorbs_what_another_counted() {
        let (shared, own) = (Budget::new(Some(10), HOUR), Budget::new(Some(10), HOUR));
        let now = Instant::now();
        shared.admit(Priority::Asked, now).unwrap();
        own.admit(Priority::Asked, now).unwrap();
        own.admit(Priority::Asked, now).unwrap();
        shared.absorb(&own);
        shared.absorb(&shared);
        assert_eq!(shared.snapshot(now).used, 3);
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(humanize(HOUR), "1h");
        assert_eq!(humanize(Duration::from_secs(4500)), "1h15m");
        assert_eq!(humanize(Duration::from_millis(45_700)), "45s");
        assert_eq!(humanize(Duration::ZERO), "1s");
    }

    #[tokio::test]
    async fn work_states_its_priority_and_the_meter_counts_its_requests() {
        assert_eq!(Priority::current(), Priority::Planned);
        let ((), counted) = metered(Priority::Planned, async {
            count_request();
            Priority::Asked
                .run(async {
                    assert_eq!(Priority::current(), Priority::Asked);
                    count_request();
                })
                .await;
        })
        .await;
        assert_eq!(counted, 2, "the inner work keeps the outer meter");
    }
}
