//! Latency histograms and per-stream sequence accounting (lost / duplicated / out-of-order).

use std::collections::{BTreeMap, BTreeSet};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest trackable latency: one hour, in microseconds.
const MAX_US: u64 = 3_600_000_000;

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

/// Smaller histograms for the per-second latency timeline.
pub fn new_coarse_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 2).expect("valid histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, value_us: u64) {
    h.saturating_record(value_us.clamp(1, MAX_US));
}

/// A histogram in a form that crosses the worker → parent pipe: `(value, count)` pairs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HistData(pub Vec<(u64, u64)>);

impl HistData {
    pub fn from_hist(h: &Histogram<u64>) -> Self {
        HistData(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    pub fn add_to(&self, h: &mut Histogram<u64>) {
        for &(v, n) in &self.0 {
            let _ = h.record_n(v.clamp(1, MAX_US), n);
        }
    }
}

/// Percentile summary in milliseconds, as reported.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            min_ms: ms(h.min()),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }

    pub fn line(&self) -> String {
        if self.count == 0 {
            return "-".to_string();
        }
        format!(
            "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2} ms  (n={})",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms, self.count
        )
    }
}

/// Latency per second of send time (key: whole seconds of the monotonic clock).
#[derive(Clone, Debug, Default)]
pub struct Timeline(pub BTreeMap<u64, Histogram<u64>>);

impl Timeline {
    pub fn record(&mut self, sec: u64, value_us: u64) {
        let h = self.0.entry(sec).or_insert_with(new_coarse_hist);
        record(h, value_us);
    }

    pub fn merge(&mut self, other: &Timeline) {
        for (sec, h) in &other.0 {
            let _ = self.0.entry(*sec).or_insert_with(new_coarse_hist).add(h);
        }
    }

    pub fn to_data(&self) -> Vec<(u64, HistData)> {
        self.0
            .iter()
            .map(|(s, h)| (*s, HistData::from_hist(h)))
            .collect()
    }

    pub fn add_data(&mut self, data: &[(u64, HistData)]) {
        for (sec, d) in data {
            d.add_to(self.0.entry(*sec).or_insert_with(new_coarse_hist));
        }
    }
}

/// What a received sequence number was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqOutcome {
    /// First time seen, and no higher number was seen before.
    InOrder,
    /// First time seen, but a higher number had already arrived.
    OutOfOrder,
    /// Seen before.
    Duplicate,
}

/// Tracks one ordered stream of sequence numbers 0, 1, 2, ... (one publisher connection to
/// one channel, seen by one subscriber). Memory stays O(1) while the stream is in order: it
/// keeps the contiguous prefix `next` and only the numbers received above a gap.
#[derive(Clone, Debug, Default)]
pub struct SeqTracker {
    next: u64,
    ahead: BTreeSet<u64>,
    max_seen: Option<u64>,
    /// Numbers given up on when too many arrived above a gap (counted as lost).
    skipped: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
}

/// Above this many pending numbers over a gap, the gap is declared lost.
const MAX_AHEAD: usize = 8192;

impl SeqTracker {
    pub fn record(&mut self, seq: u64) -> SeqOutcome {
        if seq < self.next || self.ahead.contains(&seq) {
            self.duplicates += 1;
            return SeqOutcome::Duplicate;
        }
        let late = self.max_seen.is_some_and(|m| seq < m);
        self.max_seen = Some(self.max_seen.map_or(seq, |m| m.max(seq)));
        if seq == self.next {
            self.next += 1;
            while self.ahead.remove(&self.next) {
                self.next += 1;
            }
        } else {
            self.ahead.insert(seq);
            if self.ahead.len() > MAX_AHEAD {
                // Give up on the oldest gap: count it as lost and move on.
                let first = *self.ahead.iter().next().expect("non-empty");
                self.skipped += first - self.next;
                self.next = first;
                while self.ahead.remove(&self.next) {
                    self.next += 1;
                }
            }
        }
        if late {
            self.out_of_order += 1;
            SeqOutcome::OutOfOrder
        } else {
            SeqOutcome::InOrder
        }
    }

    /// Distinct numbers received.
    pub fn distinct(&self) -> u64 {
        self.next - self.skipped + self.ahead.len() as u64
    }

    /// How many of `0..expected` never arrived.
    pub fn lost(&self, expected: u64) -> u64 {
        let prefix = self.next.min(expected);
        let gap_skipped = self.skipped.min(prefix);
        let above = self.ahead.range(..expected).count() as u64;
        expected - (prefix - gap_skipped + above)
    }
}

/// Sequence accounting totals over many subscribers.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SeqTotals {
    /// Deliveries the publisher's accepted events imply (accepted events × subscribers).
    pub expected: u64,
    /// Distinct deliveries received.
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
}

impl SeqTotals {
    pub fn add(&mut self, o: &SeqTotals) {
        self.expected += o.expected;
        self.received += o.received;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
    }
}

/// Failure counts by reason.
pub type Failures = BTreeMap<String, u64>;

pub fn merge_failures(into: &mut Failures, from: &Failures) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_has_no_anomalies() {
        let mut t = SeqTracker::default();
        for s in 0..1000 {
            assert_eq!(t.record(s), SeqOutcome::InOrder);
        }
        assert_eq!(t.distinct(), 1000);
        assert_eq!(t.lost(1000), 0);
        assert_eq!((t.duplicates, t.out_of_order), (0, 0));
        assert!(t.ahead.is_empty());
    }

    #[test]
    fn detects_loss_at_end_and_in_the_middle() {
        let mut t = SeqTracker::default();
        for s in [0, 1, 2, 4, 5, 7] {
            t.record(s);
        }
        // 3 and 6 missing in the middle, 8 and 9 missing at the end.
        assert_eq!(t.distinct(), 6);
        assert_eq!(t.lost(10), 4);
        assert_eq!(t.lost(8), 2);
        assert_eq!(t.out_of_order, 0);
    }

    #[test]
    fn detects_duplicates() {
        let mut t = SeqTracker::default();
        assert_eq!(t.record(0), SeqOutcome::InOrder);
        assert_eq!(t.record(0), SeqOutcome::Duplicate);
        assert_eq!(t.record(2), SeqOutcome::InOrder);
        assert_eq!(t.record(2), SeqOutcome::Duplicate);
        assert_eq!(t.record(1), SeqOutcome::OutOfOrder);
        assert_eq!(t.record(1), SeqOutcome::Duplicate);
        assert_eq!(t.duplicates, 3);
        assert_eq!(t.distinct(), 3);
        assert_eq!(t.lost(3), 0);
    }

    #[test]
    fn detects_out_of_order() {
        let mut t = SeqTracker::default();
        for s in [0, 2, 1, 5, 3, 4, 6] {
            t.record(s);
        }
        assert_eq!(t.out_of_order, 3); // 1, 3 and 4 arrived after a higher number
        assert_eq!(t.duplicates, 0);
        assert_eq!(t.distinct(), 7);
        assert_eq!(t.lost(7), 0);
        assert!(t.ahead.is_empty());
    }

    #[test]
    fn long_gap_is_bounded_and_counted_lost() {
        let mut t = SeqTracker::default();
        t.record(0);
        // 1 is never delivered; many later numbers arrive.
        for s in 2..(MAX_AHEAD as u64 + 100) {
            t.record(s);
        }
        assert!(t.ahead.len() <= MAX_AHEAD);
        let expected = MAX_AHEAD as u64 + 100;
        assert_eq!(t.lost(expected), 1);
        assert_eq!(t.distinct(), expected - 1);
    }

    #[test]
    fn histogram_roundtrip_and_percentiles() {
        let mut h = new_hist();
        for v in 1..=1000u64 {
            record(&mut h, v * 1000); // 1..1000 ms
        }
        let data = HistData::from_hist(&h);
        let json = serde_json::to_string(&data).unwrap();
        let back: HistData = serde_json::from_str(&json).unwrap();
        let mut h2 = new_hist();
        back.add_to(&mut h2);
        assert_eq!(h2.len(), 1000);
        let p = Percentiles::of(&h2);
        assert!((p.p50_ms - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99_ms - 990.0).abs() < 1.5, "{p:?}");
        assert!((p.max_ms - 1000.0).abs() < 1.0, "{p:?}");
    }

    #[test]
    fn timeline_merges_by_second() {
        let mut a = Timeline::default();
        a.record(10, 5);
        a.record(11, 7);
        let mut b = Timeline::default();
        b.add_data(&a.to_data());
        b.record(11, 9);
        let mut c = Timeline::default();
        c.merge(&b);
        assert_eq!(c.0.len(), 2);
        assert_eq!(c.0[&11].len(), 2);
    }

    #[test]
    fn totals_add() {
        let mut t = SeqTotals::default();
        t.add(&SeqTotals {
            expected: 10,
            received: 9,
            lost: 1,
            duplicated: 2,
            out_of_order: 3,
        });
        t.add(&SeqTotals {
            expected: 1,
            received: 1,
            ..Default::default()
        });
        assert_eq!(t.expected, 11);
        assert_eq!(t.lost, 1);
    }
}
