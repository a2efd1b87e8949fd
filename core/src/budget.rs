//! Message budgets: token buckets, one per sender, fed with `now` by the shell.
//!
//! A [`Budget`] lets a sender through at a sustained [`BudgetSpec::per_minute`] with bursts of
//! up to [`BudgetSpec::burst`]; what it sends beyond that is dropped ([`Verdict::Drop`]). A
//! sender that goes on sending past its budget (another `burst` messages dropped before its
//! bucket ever filled up again) gets [`Verdict::Disconnect`] for every further excess message,
//! until it calms down: the shell closes its connection when it can, and drops otherwise.
//!
//! [`Budgets`] keeps one budget per key (a device id, a device and an event kind) and forgets
//! the budgets of senders that are back to a full bucket ([`Budgets::prune`], also done by
//! [`Budgets::take`] whenever the number of budgets doubled since the last pruning), so its size
//! is bounded by the senders active within about one refill time.
//!
//! | bucket | debt (drops since last full) | message gets |
//! |---|---|---|
//! | ≥ 1 token | any | [`Verdict::Pass`] (one token taken) |
//! | < 1 token | < burst | [`Verdict::Drop`] (debt + 1) |
//! | < 1 token | ≥ burst | [`Verdict::Disconnect`] (debt + 1) |
//! | refilled to full | reset to 0 | |

use alloc::collections::BTreeMap;

/// [`Budgets::take`] prunes first when it holds at least this many budgets.
const PRUNE_AT: usize = 1024;

/// Units of one token: a minute in milliseconds, so that a rate per minute refills exactly
/// `per_minute` units per millisecond (no fractions).
const UNIT: u64 = 60_000;

/// A budget's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BudgetSpec {
    /// Sustained messages per minute.
    pub per_minute: u32,
    /// Messages a full bucket lets through at once (at least 1).
    pub burst: u32,
}

impl BudgetSpec {
    /// `per_minute` sustained with bursts of `burst` (0 counts as 1).
    pub fn new(per_minute: u32, burst: u32) -> Self {
        BudgetSpec {
            per_minute,
            burst: burst.max(1),
        }
    }

    fn capacity(self) -> u64 {
        u64::from(self.burst) * UNIT
    }
}

/// What the shell does with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Within budget: handle it.
    Pass,
    /// Over budget: drop it (and count it).
    Drop,
    /// Over budget for long: drop it, and close the sender's connection if possible.
    Disconnect,
}

/// One sender's token bucket (see the [module documentation](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    spec: BudgetSpec,
    /// In [`UNIT`]s.
    tokens: u64,
    /// Unix milliseconds of the last refill.
    at: u64,
    /// Messages dropped since the bucket was last full.
    debt: u32,
}

impl Budget {
    /// A full bucket at `now_ms`.
    pub fn new(spec: BudgetSpec, now_ms: u64) -> Self {
        Budget {
            spec,
            tokens: spec.capacity(),
            at: now_ms,
            debt: 0,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.at);
        self.at = self.at.max(now_ms);
        let added = elapsed.saturating_mul(u64::from(self.spec.per_minute));
        self.tokens = self.tokens.saturating_add(added).min(self.spec.capacity());
        if self.tokens == self.spec.capacity() {
            self.debt = 0;
        }
    }

    /// Takes one message at `now_ms`.
    pub fn take(&mut self, now_ms: u64) -> Verdict {
        self.refill(now_ms);
        if self.tokens >= UNIT {
            self.tokens -= UNIT;
            return Verdict::Pass;
        }
        let verdict = if self.debt >= self.spec.burst {
            Verdict::Disconnect
        } else {
            Verdict::Drop
        };
        self.debt = self.debt.saturating_add(1);
        verdict
    }

    /// Whether the bucket is full at `now_ms` (the sender is as if never seen).
    pub fn is_full(&self, now_ms: u64) -> bool {
        let mut probe = self.clone();
        probe.refill(now_ms);
        probe.tokens == self.spec.capacity()
    }
}

/// One [`Budget`] per key (see the [module documentation](self)).
#[derive(Debug, Clone)]
pub struct Budgets<K> {
    spec: BudgetSpec,
    budgets: BTreeMap<K, Budget>,
    prune_at: usize,
}

impl<K: Ord> Budgets<K> {
    /// No sender seen yet; every sender gets `spec`.
    pub fn new(spec: BudgetSpec) -> Self {
        Budgets {
            spec,
            budgets: BTreeMap::new(),
            prune_at: PRUNE_AT,
        }
    }

    /// Takes one message of `key` at `now_ms`.
    pub fn take(&mut self, key: K, now_ms: u64) -> Verdict {
        if self.budgets.len() >= self.prune_at {
            self.prune(now_ms);
            self.prune_at = self.budgets.len().saturating_mul(2).max(PRUNE_AT);
        }
        let spec = self.spec;
        self.budgets
            .entry(key)
            .or_insert_with(|| Budget::new(spec, now_ms))
            .take(now_ms)
    }

    /// Forgets the senders whose bucket is full again at `now_ms`.
    pub fn prune(&mut self, now_ms: u64) {
        self.budgets.retain(|_, b| !b.is_full(now_ms));
    }

    /// How many senders are remembered.
    pub fn len(&self) -> usize {
        self.budgets.len()
    }

    /// Whether no sender is remembered.
    pub fn is_empty(&self) -> bool {
        self.budgets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_excess_is_dropped_then_disconnected() {
        let mut b = Budget::new(BudgetSpec::new(60, 3), 0);
        for _ in 0..3 {
            assert_eq!(b.take(0), Verdict::Pass);
        }
        for _ in 0..3 {
            assert_eq!(b.take(0), Verdict::Drop);
        }
        assert_eq!(b.take(0), Verdict::Disconnect);
        // One token a second.
        assert_eq!(b.take(999), Verdict::Disconnect);
        assert_eq!(b.take(1000), Verdict::Pass);
    }

    #[test]
    fn a_sender_that_calms_down_is_forgiven() {
        let mut b = Budget::new(BudgetSpec::new(60, 2), 0);
        for _ in 0..5 {
            b.take(0);
        }
        assert_eq!(b.take(0), Verdict::Disconnect);
        // Two seconds refill the bucket: the debt is forgotten.
        assert!(b.is_full(2000));
        assert_eq!(b.take(2000), Verdict::Pass);
        assert_eq!(b.take(2000), Verdict::Pass);
        assert_eq!(b.take(2000), Verdict::Drop);
    }

    #[test]
    fn time_going_backwards_or_far_forwards_does_not_overflow() {
        let mut b = Budget::new(BudgetSpec::new(u32::MAX, u32::MAX), u64::MAX);
        assert_eq!(b.take(0), Verdict::Pass);
        assert_eq!(b.take(u64::MAX), Verdict::Pass);
        let mut zero = Budget::new(BudgetSpec::new(0, 0), 0);
        assert_eq!(zero.take(0), Verdict::Pass);
        assert_eq!(zero.take(u64::MAX), Verdict::Drop);
    }

    #[test]
    fn budgets_are_per_key_and_pruned_when_full() {
        let mut all = Budgets::new(BudgetSpec::new(60, 1));
        assert_eq!(all.take("a", 0), Verdict::Pass);
        assert_eq!(all.take("a", 0), Verdict::Drop);
        assert_eq!(all.take("b", 0), Verdict::Pass);
        assert_eq!(all.len(), 2);
        all.prune(500);
        assert_eq!(all.len(), 2);
        all.prune(1000);
        assert!(all.is_empty());
    }

    #[test]
    fn budgets_stay_bounded_by_active_senders() {
        let mut all = Budgets::new(BudgetSpec::new(60_000, 1));
        // A new sender every millisecond: each bucket is full again 1 ms later.
        for i in 0..100_000u64 {
            all.take(i, i);
        }
        assert!(all.len() <= 2 * PRUNE_AT, "{}", all.len());
    }
}
