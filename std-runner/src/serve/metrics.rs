//! `GET /metrics`: counters, gauges and histograms in the Prometheus text
//! exposition format (version 0.0.4,
//! <https://prometheus.io/docs/instrumenting/exposition_formats/>).
//!
//! Handlers count requests by route and status; the engine thread counts
//! tokens and observes latencies. Everything is an atomic or a short lock, so
//! neither side waits on the other.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The routes the server answers; anything else is counted as `other`, so a
/// client cannot grow the label set.
pub(super) const ROUTES: &[&str] = &[
    "/health",
    "/metrics",
    "/tokenize",
    "/detokenize",
    "/v1/models",
    "/v1/chat/completions",
    "/v1/completions",
];

/// A route's label: the path if the server has it, else `other`.
pub(super) fn route_label(path: &str) -> &'static str {
    ROUTES
        .iter()
        .find(|r| **r == path)
        .copied()
        .unwrap_or("other")
}

/// A histogram with fixed upper bounds (seconds).
pub(super) struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last is above every bound.
    counts: Vec<AtomicU64>,
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub(super) fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let at = self.bounds.partition_point(|&b| b < s);
        self.counts[at].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cum = 0u64;
        for (i, b) in self.bounds.iter().enumerate() {
            cum += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}");
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        // The count equals the +Inf bucket read above, even while observed.
        let _ = writeln!(out, "{name}_count {cum}");
    }
}

/// Everything `/metrics` reports besides the gauges read from the engine.
pub(super) struct Metrics {
    /// Answers by (route, status code).
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Prompt tokens the engine has read.
    pub(super) prompt_tokens: AtomicU64,
    /// Prompt tokens found in a slot's cache (counted in `prompt_tokens`
    /// too, not read again).
    pub(super) prompt_cache_tokens: AtomicU64,
    /// Tokens the engine has generated.
    pub(super) generated_tokens: AtomicU64,
    /// Prompt-lookup drafts fed, and those the draws confirmed.
    pub(super) lookup_drafted: AtomicU64,
    pub(super) lookup_accepted: AtomicU64,
    /// From a request's arrival to its first generated token.
    pub(super) ttft: Histogram,
    /// Between one generated token of a request and its next.
    pub(super) token_latency: Histogram,
}

const TTFT_BOUNDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const TOKEN_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The gauges, read when `/metrics` is asked for.
pub(super) struct Gauges {
    pub(super) queued: usize,
    pub(super) busy: usize,
    pub(super) slots: usize,
    /// Paged KV: free blocks and blocks in all.
    pub(super) blocks: Option<(usize, usize)>,
}

impl Metrics {
    pub(super) fn new() -> Metrics {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            prompt_tokens: AtomicU64::new(0),
            prompt_cache_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            lookup_drafted: AtomicU64::new(0),
            lookup_accepted: AtomicU64::new(0),
            ttft: Histogram::new(TTFT_BOUNDS),
            token_latency: Histogram::new(TOKEN_BOUNDS),
        }
    }

    /// Counts one answer.
    pub(super) fn request(&self, route: &'static str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route, status)).or_insert(0) += 1;
        }
    }

    /// The exposition text.
    pub(super) fn render(&self, g: &Gauges) -> String {
        let mut o = String::new();
        o.push_str(
            "# HELP ember_requests_total HTTP requests answered, by route and status code.\n",
        );
        o.push_str("# TYPE ember_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((route, code), n) in m.iter() {
                let _ = writeln!(
                    o,
                    "ember_requests_total{{route=\"{route}\",code=\"{code}\"}} {n}"
                );
            }
        }
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} counter");
            let _ = writeln!(o, "{name} {v}");
        };
        counter(
            &mut o,
            "ember_prompt_tokens_total",
            "Prompt tokens of the requests admitted (those found in a slot's cache included).",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut o,
            "ember_prompt_cache_tokens_total",
            "Prompt tokens found in a slot's cache and not read again.",
            self.prompt_cache_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut o,
            "ember_generated_tokens_total",
            "Tokens generated.",
            self.generated_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut o,
            "ember_lookup_drafted_tokens_total",
            "Prompt-lookup drafts fed (--lookup).",
            self.lookup_drafted.load(Ordering::Relaxed),
        );
        counter(
            &mut o,
            "ember_lookup_accepted_tokens_total",
            "Prompt-lookup drafts the draws confirmed.",
            self.lookup_accepted.load(Ordering::Relaxed),
        );
        self.ttft.render(
            &mut o,
            "ember_time_to_first_token_seconds",
            "Seconds from a request's arrival to its first generated token.",
        );
        self.token_latency.render(
            &mut o,
            "ember_time_per_output_token_seconds",
            "Seconds between consecutive generated tokens of a request.",
        );
        let gauge = |o: &mut String, name: &str, help: &str, v: usize| {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} gauge");
            let _ = writeln!(o, "{name} {v}");
        };
        gauge(
            &mut o,
            "ember_queue_depth",
            "Requests waiting for a slot.",
            g.queued,
        );
        gauge(&mut o, "ember_slots_busy", "Slots generating now.", g.busy);
        gauge(&mut o, "ember_slots", "Slots in all (--parallel).", g.slots);
        if let Some((free, all)) = g.blocks {
            gauge(
                &mut o,
                "ember_kv_blocks_free",
                "KV pool blocks no sequence holds (--kv-memory).",
                free,
            );
            gauge(&mut o, "ember_kv_blocks", "KV pool blocks in all.", all);
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_the_count() {
        let m = Metrics::new();
        for ms in [5u64, 30, 30, 700, 120_000] {
            m.ttft.observe(Duration::from_millis(ms));
        }
        m.request("/health", 200);
        m.request("/health", 200);
        m.request(route_label("/nope"), 404);
        let text = m.render(&Gauges {
            queued: 1,
            busy: 2,
            slots: 4,
            blocks: Some((5, 9)),
        });
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("{prefix} in\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            line("ember_time_to_first_token_seconds_bucket{le=\"0.01\"}"),
            "1"
        );
        assert_eq!(
            line("ember_time_to_first_token_seconds_bucket{le=\"0.05\"}"),
            "3"
        );
        assert_eq!(
            line("ember_time_to_first_token_seconds_bucket{le=\"1\"}"),
            "4"
        );
        assert_eq!(
            line("ember_time_to_first_token_seconds_bucket{le=\"+Inf\"}"),
            "5"
        );
        assert_eq!(line("ember_time_to_first_token_seconds_count"), "5");
        assert_eq!(line("ember_time_to_first_token_seconds_sum"), "120.765");
        assert_eq!(
            line("ember_requests_total{route=\"/health\",code=\"200\"}"),
            "2"
        );
        assert_eq!(
            line("ember_requests_total{route=\"other\",code=\"404\"}"),
            "1"
        );
        assert_eq!(line("ember_slots_busy"), "2");
        assert_eq!(line("ember_kv_blocks_free"), "5");
        assert_eq!(line("ember_kv_blocks "), "9");
    }
}
