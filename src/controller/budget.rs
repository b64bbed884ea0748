//! Each integration's request budget and the plan that keeps its interval work within it.
//!
//! - **Pools:** a [`Pool`] is a budget ([`bitbucket::Budget`], which every request of its
//!   integrations' clients is admitted by) and its plan. An integration has a pool of its own,
//!   except that Cloud integrations validated as one user or OAuth consumer share one (see
//!   [`pool_key`]).
//! - **Demand:** each Subscription plans `calls per sync × window / interval` requests a window
//!   (calls per sync measured, averaged; 1 until measured), and so do the integrations' own
//!   periodic validations.
//! - **Stretch:** when the sum is more than the turns can give (the budget's planned share, a
//!   little less for headroom), every interval in the pool is stretched by the same factor
//!   ([`Account::interval`]), and each Subscription says so (`status.stretchedSyncInterval`,
//!   an Event `SyncIntervalStretched`).
//! - **Turns:** planned work takes turns spaced by its cost ([`Account::turn`]), so
//!   Subscriptions made together are spread over the window instead of syncing together; a
//!   burst of a tenth of the window goes at once, so a few Subscriptions never wait.
//!
//! Work someone asked for (sync requests, webhook refreshes, validations after a change) skips
//! the turns and may use the whole budget. No I/O; time is passed in.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use kube::ResourceExt;

use super::lock;
use crate::{
    api::{AccountKind, BitbucketIntegration, RequestBudgetStatus, ServerType},
    bitbucket::{
        self, Budget, Priority,
        budget::{BudgetSlot, Snapshot},
    },
};

/// What Bitbucket Cloud allows a credential an hour (API-FACTS §C.2): per user for API tokens
/// and OAuth, per token for access tokens (which Bitbucket may scale up and report).
pub const CLOUD_REQUESTS_PER_HOUR: u32 = 1_000;

/// How much a new stretch must differ from the one shown before it is shown (so a measured
/// cost that wobbles does not rewrite every Subscription's status).
const STRETCH_HYSTERESIS: f64 = 0.1;

/// How much of the last sync's cost the average takes in.
const COST_WEIGHT: f64 = 0.3;

/// Turns are given at this share of the planned rate: with the burst of a tenth of the window
/// on top, no window ever holds more planned requests than the budget admits.
const PACE: f64 = 0.9;

/// How full the stretched plan keeps the turns: the rest absorbs syncs that cost more than
/// their average, so a Subscription rarely waits for its turn past its interval.
const UTILIZATION: f64 = 0.85;

/// The budgets of every integration, by UID, and the pools they draw on.
pub struct Budgets {
    window: Duration,
    /// Off: no limit, nothing waits, and the clients do not count (the operator as it was
    /// before it had budgets: the benchmark's baseline).
    off: bool,
    accounts: Mutex<HashMap<String, Arc<Account>>>,
    /// By [`pool_key`]. A pool lives while an account uses it, and after that while its
    /// window still counts requests: Bitbucket still counts them, so an account that comes
    /// back finds them (see [`Budgets::drop_unused_pools`]).
    pools: Mutex<HashMap<String, Arc<Pool>>>,
}

impl Default for Budgets {
    fn default() -> Self {
        Self::new(Duration::from_secs(3600))
    }
}

impl Budgets {
    /// Budgets counted over `window`: an hour, except in benchmarks that speed time up, where
    /// the window stands for an hour (a budget of 1,000 an hour is 1,000 a window).
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            off: false,
            accounts: Mutex::default(),
            pools: Mutex::default(),
        }
    }

    /// No budgets at all: see [`Budgets::off`](Self).
    pub fn off() -> Self {
        Self {
            off: true,
            ..Self::default()
        }
    }

    /// What `integration`'s clients are admitted by (`None` when budgets are off): the budget
    /// of its pool, which may change without the client being rebuilt.
    pub fn for_clients(&self, integration: &BitbucketIntegration) -> Option<Arc<BudgetSlot>> {
        (!self.off).then(|| Arc::clone(&self.account(integration).slot))
    }

    /// The account of `integration`, made on first use, in the pool its credential draws on
    /// now (see [`pool_key`]), with its spec's settings applied.
    pub fn account(&self, integration: &BitbucketIntegration) -> Arc<Account> {
        let named = integration.status.as_ref().and_then(|s| s.account.as_ref());
        self.account_named(integration, named)
    }

    /// [`Self::account`], with `named` the Bitbucket account the integration authenticates as
    /// rather than the one its status names: a validation's, in the status about to be written,
    /// which then shows the pool it draws on at once instead of in a second write.
    pub fn account_named(
        &self,
        integration: &BitbucketIntegration,
        named: Option<&crate::api::Account>,
    ) -> Arc<Account> {
        let uid = integration.uid().unwrap_or_default();
        let found = lock(&self.accounts).get(&uid).cloned();
        // An object that does not say which account (a copy from before the validation that
        // named it) leaves the account where it is.
        let key = match (pool_key(integration, named), &found) {
            (Some(key), _) => key,
            (None, Some(account)) => account.pool().key.clone(),
            (None, None) => own_pool_key(integration),
        };
        let account = match found {
            Some(account) if account.pool().key == key => account,
            Some(account) => {
                account.move_to(self.pool(&key, integration));
                account
            }
            None => {
                let pool = self.pool(&key, integration);
                let account = Arc::new(Account {
                    namespace: integration.namespace().unwrap_or_default(),
                    name: integration.name_any(),
                    uid: Arc::from(uid.as_str()),
                    slot: Arc::new(BudgetSlot::new(Arc::clone(&pool.budget))),
                    pool: Mutex::new(pool),
                });
                lock(&self.accounts).insert(uid, Arc::clone(&account));
                account
            }
        };
        // Only a pool of its own is sized by the integration (a shared one is the user's).
        if let Some(set) = integration
            .spec
            .request_budget
            .as_ref()
            .filter(|_| !self.off)
        {
            (account.pool().budget).configure(set.requests_per_hour, set.planned_percent);
        }
        account
    }

    /// The pool `key` names, made for `integration` when there is none.
    fn pool(&self, key: &str, integration: &BitbucketIntegration) -> Arc<Pool> {
        let mut pools = lock(&self.pools);
        if let Some(pool) = pools.get(key) {
            return Arc::clone(pool);
        }
        let default = match integration.spec.server.server_type {
            _ if self.off => None,
            ServerType::Cloud => Some(CLOUD_REQUESTS_PER_HOUR),
            ServerType::DataCenter => None,
        };
        let pool = Arc::new(Pool {
            key: key.to_owned(),
            budget: Arc::new(Budget::new(default, self.window)),
            plan: Mutex::default(),
        });
        pools.insert(key.to_owned(), Arc::clone(&pool));
        pool
    }

    /// Drops the pools no account uses whose window counts no request any more.
    fn drop_unused_pools(&self, now: Instant) {
        lock(&self.pools).retain(|_, pool| {
            // One reference is the map's own.
            Arc::strong_count(pool) > 1 || pool.budget.snapshot(now).used > 0
        });
    }

    /// Forgets the integrations and Subscriptions not in the sets; returns the integrations
    /// forgotten.
    pub fn sweep(&self, integrations: &HashSet<String>, subscriptions: &HashSet<String>) -> usize {
        let mut accounts = lock(&self.accounts);
        let before = accounts.len();
        accounts.retain(|uid, _| integrations.contains(uid));
        for account in accounts.values() {
            // The integrations' own validations are planned too.
            (lock(&account.pool().plan))
                .retain(|uid| integrations.contains(uid) || subscriptions.contains(uid));
        }
        let forgotten = before - accounts.len();
        drop(accounts);
        self.drop_unused_pools(Instant::now());
        forgotten
    }

    pub fn forget_integration(&self, uid: &str) {
        if let Some(account) = lock(&self.accounts).remove(uid) {
            lock(&account.pool().plan).forget_owner(uid);
        }
        self.drop_unused_pools(Instant::now());
    }

    pub fn forget_subscription(&self, uid: &str) {
        for account in lock(&self.accounts).values() {
            lock(&account.pool().plan).retain(|s| s != uid);
        }
    }

    /// Every integration's budget now (the pool's it draws on), with its namespace and name.
    pub fn snapshots(&self, now: Instant) -> Vec<(String, String, Snapshot)> {
        lock(&self.accounts)
            .values()
            .map(|a| {
                (
                    a.namespace.clone(),
                    a.name.clone(),
                    a.pool().budget.snapshot(now),
                )
            })
            .collect()
    }
}

/// Which pool an integration's credential draws on. Bitbucket Cloud counts an API token's and
/// an OAuth consumer's requests per user (or consumer, API-FACTS §C.2): integrations that
/// authenticate as one account on one server share a pool once validated, unless they set
/// their own budget. Anything else (an access token, which has its own allowance; Data Center;
/// one not validated yet) has a pool of its own. `account`: the one it authenticates as, by its
/// status (or by the validation whose status is being written). `None`: not known (a Cloud
/// integration whose status names no account), so the pool it drew on so far stands.
fn pool_key(
    integration: &BitbucketIntegration,
    account: Option<&crate::api::Account>,
) -> Option<String> {
    let spec = &integration.spec;
    if spec.server.server_type != ServerType::Cloud || spec.request_budget.is_some() {
        return Some(own_pool_key(integration));
    }
    let account = account?;
    match (&account.kind, &account.uuid) {
        (AccountKind::User | AccountKind::OAuthConsumer, Some(uuid)) => {
            let server = spec.server.url.as_deref().unwrap_or("cloud");
            Some(format!("account {server} {uuid}"))
        }
        _ => Some(own_pool_key(integration)),
    }
}

fn own_pool_key(integration: &BitbucketIntegration) -> String {
    format!("integration {}", integration.uid().unwrap_or_default())
}

/// Work the budget let nothing be sent for (see [`Account::ran`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotSent {
    /// Until there is room.
    pub wait: Duration,
    /// Held by a 429 Bitbucket answered (its `Retry-After`), not by the budget's own count.
    pub rate_limited: bool,
}

/// A budget and the plan of the work that draws on it.
struct Pool {
    key: String,
    budget: Arc<Budget>,
    plan: Mutex<Plan>,
}

/// One integration's place in a pool.
pub struct Account {
    namespace: String,
    name: String,
    /// Shared with each of its Subscriptions' demands.
    uid: Arc<str>,
    /// What its clients are admitted by: the pool's budget.
    slot: Arc<BudgetSlot>,
    pool: Mutex<Arc<Pool>>,
}

#[derive(Default)]
struct Plan {
    /// By Subscription UID.
    demands: HashMap<String, Demand>,
    /// The factor every interval is stretched by (1: none), as last shown.
    stretch: f64,
    /// The earliest a planned sync may begin that has not taken its turn yet (GCRA's
    /// theoretical arrival time).
    next_turn: Option<Instant>,
    /// Turns given to Subscriptions that were told to come back for them.
    turns: HashMap<String, Instant>,
}

struct Demand {
    /// The integration whose work it is (its UID, shared).
    owner: Arc<str>,
    calls_per_sync: f64,
    interval: Duration,
}

impl Plan {
    fn retain(&mut self, keep: impl Fn(&String) -> bool) {
        self.demands.retain(|uid, _| keep(uid));
        self.turns.retain(|uid, _| keep(uid));
    }

    /// Drops the work of the integration `owner` (gone, or moved to another pool).
    fn forget_owner(&mut self, owner: &str) {
        let gone: HashSet<String> = (self.demands.iter())
            .filter(|(_, d)| &*d.owner == owner)
            .map(|(uid, _)| uid.clone())
            .collect();
        self.retain(|uid| !gone.contains(uid));
    }

    /// Requests a window all planned syncs need, at their own intervals.
    fn demand(&self, window: Duration) -> f64 {
        self.demands
            .values()
            .map(|d| d.calls_per_sync * window.as_secs_f64() / d.interval.as_secs_f64().max(1e-3))
            .sum()
    }

    /// Recomputes the stretch for `planned` requests a window. It grows at once (the interval
    /// shown is never shorter than the one kept), and shrinks only by more than the hysteresis.
    fn restretch(&mut self, window: Duration, planned: Option<u32>) {
        let wanted = match planned {
            Some(planned) => {
                let capacity = f64::from(planned.max(1)) * PACE * UTILIZATION;
                (self.demand(window) / capacity).max(1.0)
            }
            None => 1.0,
        };
        let shown = self.stretch.max(1.0);
        if wanted >= shown || wanted == 1.0 || (shown - wanted) / shown > STRETCH_HYSTERESIS {
            self.stretch = wanted;
        }
    }
}

/// Where a planned sync stands in the queue of turns.
#[derive(Debug, PartialEq, Eq)]
enum Turn {
    /// Go now.
    Now,
    /// Come back at this instant, which is kept for this Subscription.
    At(Instant),
}

impl Account {
    /// The pool it draws on now.
    fn pool(&self) -> Arc<Pool> {
        Arc::clone(&lock(&self.pool))
    }

    /// Moves to `pool`, taking its work out of the one it leaves; its clients count against
    /// the new pool's budget from their next request.
    fn move_to(&self, pool: Arc<Pool>) {
        self.slot.set(Arc::clone(&pool.budget));
        let left = std::mem::replace(&mut *lock(&self.pool), Arc::clone(&pool));
        lock(&left.plan).forget_owner(&self.uid);
        // What it counted on its own (its first validation) was the same credential's.
        if left.key.starts_with("integration ") {
            pool.budget.absorb(&left.budget);
        }
    }

    /// The interval `subscription` is synced at: `interval` stretched to fit the budget, in
    /// whole seconds (minutes from ten minutes up). Counts the Subscription in the plan.
    pub fn interval(&self, subscription: &str, interval: Duration) -> Duration {
        let pool = self.pool();
        let planned = pool.budget.snapshot(Instant::now()).planned;
        let mut plan = lock(&pool.plan);
        match plan.demands.get_mut(subscription) {
            Some(demand) if demand.interval == interval => {}
            Some(demand) => {
                demand.interval = interval;
                plan.restretch(pool.budget.window(), planned);
            }
            None => {
                let demand = Demand {
                    owner: Arc::clone(&self.uid),
                    calls_per_sync: 1.0,
                    interval,
                };
                plan.demands.insert(subscription.to_owned(), demand);
                plan.restretch(pool.budget.window(), planned);
            }
        }
        stretched(interval, plan.stretch)
    }

    /// Records what a planned sync of `subscription` cost.
    fn spent(&self, subscription: &str, calls: u32) {
        let pool = self.pool();
        let planned = pool.budget.snapshot(Instant::now()).planned;
        let mut plan = lock(&pool.plan);
        if let Some(demand) = plan.demands.get_mut(subscription) {
            demand.calls_per_sync =
                demand.calls_per_sync * (1.0 - COST_WEIGHT) + f64::from(calls) * COST_WEIGHT;
            plan.restretch(pool.budget.window(), planned);
        }
    }

    /// Whether a planned sync of `subscription` may begin `now`, or when it may. Turns are
    /// spaced by the Subscription's cost over the planned share; without a limit, always now.
    fn turn(&self, subscription: &str, now: Instant) -> Turn {
        let pool = self.pool();
        let Some(planned) = pool.budget.snapshot(now).planned else {
            return Turn::Now;
        };
        let window = pool.budget.window();
        let mut plan = lock(&pool.plan);
        if let Some(at) = plan.turns.get(subscription).copied() {
            if at <= now {
                plan.turns.remove(subscription);
                return Turn::Now;
            }
            return Turn::At(at);
        }
        let cost = (plan.demands.get(subscription)).map_or(1.0, |d| d.calls_per_sync.max(0.1));
        let spacing = window.mul_f64(cost / (f64::from(planned.max(1)) * PACE));
        let burst = window / 10;
        let next = plan.next_turn.unwrap_or(now).max(now);
        plan.next_turn = Some(next + spacing);
        if next <= now + burst {
            return Turn::Now;
        }
        let at = next - burst;
        plan.turns.insert(subscription.to_owned(), at);
        Turn::At(at)
    }

    /// Gives up a turn `subscription` was keeping (a sync someone asked for came first).
    fn skip_turn(&self, subscription: &str) {
        lock(&self.pool().plan).turns.remove(subscription);
    }

    /// The priority of `key`'s work now: asked-for work goes at once (giving up a turn it
    /// kept); planned work takes its turn, or `Err` says how long until it comes.
    pub fn priority(&self, key: &str, asked: bool, now: Instant) -> Result<Priority, Duration> {
        if asked {
            self.skip_turn(key);
            return Ok(Priority::Asked);
        }
        match self.turn(key, now) {
            Turn::Now => Ok(Priority::Planned),
            Turn::At(at) => Err(at - now),
        }
    }

    /// After `key`'s work of `priority` made `calls` requests and ended in `result`: `Some`
    /// when the budget let nothing be sent (the work is still to do, then); otherwise planned
    /// work's cost is counted in the plan. Nothing is sent when the budget is spent, or, for
    /// planned work, while a 429 holds it (the transport's `RateLimited` with no request
    /// made): nothing failed then, and the last state stands.
    pub fn ran<T>(
        &self,
        key: &str,
        priority: Priority,
        result: &Result<T, bitbucket::Error>,
        calls: u32,
    ) -> Option<NotSent> {
        use bitbucket::Error::{OverBudget, RateLimited};
        // A 429 another task's request met (a shared listing) says what Bitbucket sent: at
        // most a window is believed.
        let window = self.pool().budget.window();
        match result {
            Err(OverBudget { retry_after, .. }) if calls == 0 => {
                return Some(NotSent {
                    wait: (*retry_after).min(window),
                    rate_limited: false,
                });
            }
            Err(RateLimited {
                retry_after: Some(retry_after),
            }) if calls == 0 => {
                return Some(NotSent {
                    wait: (*retry_after).min(window),
                    rate_limited: true,
                });
            }
            _ => {}
        }
        if priority == Priority::Planned {
            self.spent(key, calls);
        }
        None
    }

    /// The budget as the integration's status shows it (`None`: no limit).
    pub fn status(&self) -> Option<RequestBudgetStatus> {
        let pool = self.pool();
        let snapshot = pool.budget.snapshot(Instant::now());
        let shared = pool.key.starts_with("account ");
        Some(RequestBudgetStatus {
            requests_per_hour: snapshot.limit?,
            planned_per_hour: snapshot.planned?,
            source: match shared {
                true => format!(
                    "{}, shared by the integrations of this account",
                    snapshot.source.as_str()
                ),
                false => snapshot.source.as_str().to_owned(),
            },
        })
    }

    /// The integration's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// `interval` times `stretch`, rounded up to whole seconds (whole minutes from ten minutes).
fn stretched(interval: Duration, stretch: f64) -> Duration {
    if stretch <= 1.0 {
        return interval;
    }
    let seconds = (interval.as_secs_f64() * stretch).ceil() as u64;
    let seconds = if seconds >= 600 {
        seconds.div_ceil(60) * 60
    } else {
        seconds
    };
    Duration::from_secs(seconds).max(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn account(limit: Option<u32>) -> Account {
        let budget = Arc::new(Budget::new(limit, HOUR));
        let pool = Pool {
            key: "integration acme".into(),
            budget: Arc::clone(&budget),
            plan: Mutex::default(),
        };
        Account {
            namespace: "team-a".into(),
            name: "acme".into(),
            uid: "acme".into(),
            slot: Arc::new(BudgetSlot::new(budget)),
            pool: Mutex::new(Arc::new(pool)),
        }
    }

    /// A Cloud integration `uid` validated as `account` (`kind` and UUID), if it was.
    fn integration(uid: &str, spec: &str, account: Option<(&str, &str)>) -> BitbucketIntegration {
        let spec = serde_saphyr::from_str(spec).unwrap();
        let mut integration = BitbucketIntegration::new(uid, spec);
        integration.metadata.uid = Some(uid.to_owned());
        integration.metadata.namespace = Some("team-a".to_owned());
        if let Some((kind, uuid)) = account {
            let status = serde_json::json!({"account": {"kind": kind, "uuid": uuid}});
            integration.status = Some(serde_json::from_value(status).unwrap());
        }
        integration
    }

    const API_TOKEN: &str = "credentials: {type: ApiToken, secretRef: {name: s}}";

    #[test]
    fn integrations_of_one_cloud_user_share_a_budget_once_validated_and_others_do_not() {
        let budgets = Budgets::default();
        let jdoe = Some(("User", "{jdoe}"));
        let first = budgets.account(&integration("a", API_TOKEN, None));
        let clients = budgets
            .for_clients(&integration("a", API_TOKEN, None))
            .unwrap();
        first.interval("s1", Duration::from_secs(60));
        // Validated as jdoe: a, then b, draw on jdoe's pool, and a's clients follow it.
        let a = budgets.account(&integration("a", API_TOKEN, jdoe));
        let b = budgets.account(&integration("b", API_TOKEN, jdoe));
        assert!(Arc::ptr_eq(&a.pool(), &b.pool()));
        assert!(Arc::ptr_eq(&clients.get(), &a.pool().budget));
        assert!(
            lock(&a.pool().plan).demands.is_empty(),
            "s1 was planned in a's own pool"
        );
        let now = Instant::now();
        for _ in 0..3 {
            clients.get().admit(Priority::Asked, now).unwrap();
        }
        let used = |account: &Account| account.pool().budget.snapshot(now).used;
        assert_eq!((used(&a), used(&b)), (3, 3));
        assert_eq!(
            b.status().unwrap().source,
            "credential type, shared by the integrations of this account"
        );
        // Not shared: another user, an access token, a budget set on the integration.
        let others = [
            integration("c", API_TOKEN, Some(("User", "{alice}"))),
            integration(
                "d",
                "credentials: {type: AccessToken, secretRef: {name: s}}\nworkspace: acme",
                Some(("AccessToken", "{jdoe}")),
            ),
            integration(
                "e",
                &format!("{API_TOKEN}\nrequestBudget: {{requestsPerHour: 500}}"),
                jdoe,
            ),
        ];
        for other in &others {
            let other = budgets.account(other);
            assert!(!Arc::ptr_eq(&other.pool(), &a.pool()), "{}", other.name());
        }
        // A copy of a from before its validation (another controller's cache may lag) says
        // nothing of its account: a stays in jdoe's pool, and the pool keeps its count.
        let stale = budgets.account(&integration("a", API_TOKEN, None));
        assert!(Arc::ptr_eq(&stale.pool(), &b.pool()));
        assert_eq!(used(&stale), 3);
        // The last user of a pool gone, the pool stays while Bitbucket still counts its
        // requests: a user of jdoe's coming back within the hour finds them.
        drop((first, a, b, stale));
        budgets.forget_integration("a");
        budgets.forget_integration("b");
        let back = budgets.account(&integration("f", API_TOKEN, jdoe));
        assert_eq!(used(&back), 3);
        drop(back);
        budgets.forget_integration("f");
        budgets.drop_unused_pools(now + HOUR + HOUR / 10);
        assert!(lock(&budgets.pools).keys().all(|k| !k.contains("{jdoe}")));
    }

    #[test]
    fn intervals_are_kept_while_the_plan_fits_and_stretched_together_when_it_does_not() {
        let account = account(Some(1000));
        let ten_minutes = Duration::from_secs(600);
        // 100 Subscriptions of 1 call every 10 minutes: 600 an hour, within the 612 the
        // turns plan for (800 planned, paced at 90%, filled to 85%).
        for i in 0..100 {
            assert_eq!(account.interval(&format!("s{i}"), ten_minutes), ten_minutes);
        }
        // 1,000 of them: 6,000 an hour, 9.8 times the 612.
        for i in 0..1000 {
            account.interval(&format!("s{i}"), ten_minutes);
        }
        assert_eq!(
            account.interval("s0", ten_minutes),
            Duration::from_secs(99 * 60)
        );
        // Syncs that turn out to cost 2 calls stretch it further.
        for i in 0..1000 {
            for _ in 0..20 {
                account.spent(&format!("s{i}"), 2);
            }
        }
        assert_eq!(
            account.interval("s0", ten_minutes),
            Duration::from_secs(197 * 60)
        );
    }

    #[test]
    fn a_small_fall_in_cost_does_not_move_the_stretch_shown_and_a_large_one_does() {
        let account = account(Some(1000));
        let ten_minutes = Duration::from_secs(600);
        for i in 0..1000 {
            account.interval(&format!("s{i}"), ten_minutes);
        }
        let shown = account.interval("s0", ten_minutes);
        for i in 0..50 {
            account.spent(&format!("s{i}"), 0);
        }
        assert_eq!(account.interval("s0", ten_minutes), shown);
        for i in 0..1000 {
            account.spent(&format!("s{i}"), 0);
        }
        assert!(account.interval("s0", ten_minutes) < shown.mul_f64(0.8));
    }

    #[test]
    fn turns_let_a_burst_through_and_spread_the_rest_over_the_window() {
        let account = account(Some(1000));
        let now = Instant::now();
        let mut later = Vec::new();
        for i in 0..1000 {
            match account.turn(&format!("s{i}"), now) {
                Turn::Now => {}
                Turn::At(at) => later.push(at),
            }
        }
        // A tenth of the window goes at once: 72 turns 5 s apart (800 planned, paced at 90%).
        assert_eq!(1000 - later.len(), 73);
        // The rest come back 5 s apart, each at its own turn.
        let spacing = later[1] - later[0];
        assert_eq!(spacing, Duration::from_secs(5));
        assert!(later.windows(2).all(|w| w[1] - w[0] == spacing));
        // A Subscription that comes back for its turn gets it, and no one else does.
        assert_eq!(account.turn("s999", now), Turn::At(*later.last().unwrap()));
        assert_eq!(account.turn("s999", *later.last().unwrap()), Turn::Now);
    }

    #[test]
    fn without_a_limit_nothing_waits_or_stretches() {
        let account = account(None);
        for i in 0..10_000 {
            assert_eq!(account.turn(&format!("s{i}"), Instant::now()), Turn::Now);
            assert_eq!(
                account.interval(&format!("s{i}"), Duration::from_secs(60)),
                Duration::from_secs(60)
            );
        }
        assert_eq!(account.status(), None);
    }

    #[test]
    fn stretched_intervals_are_whole_seconds_or_minutes() {
        assert_eq!(
            stretched(Duration::from_secs(6), 7.5),
            Duration::from_secs(45)
        );
        assert_eq!(
            stretched(Duration::from_secs(600), 1.01),
            Duration::from_secs(660)
        );
        assert_eq!(stretched(HOUR, 1.0), HOUR);
    }
}
