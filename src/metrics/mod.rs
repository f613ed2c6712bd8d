//! The Prometheus metrics: every name, help text and label lives here, in one registry per
//! daemon that `GET /metrics` renders in the text format.
//!
//! The request path only increments children resolved in advance (per route, per decision
//! result), so counting costs an atomic add, never a label lookup or a string. Totals other
//! parts already keep (the entity cache, the activity log, the policy analysis) and levels
//! (entities stored, reservations open, process memory, the replica's standing in a fleet)
//! are read when scraped.

mod fleet;
mod process;

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use fleet::FleetSnapshot;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The content type of the rendered metrics.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Decision latency buckets, in seconds: 50 µs to 2.5 s.
const DECISION_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

/// The statuses the API answers with, each given a child resolved on first use per route.
const STATUSES: &[u16] = &[
    200, 201, 204, 400, 401, 403, 404, 405, 408, 409, 413, 415, 422, 500, 503,
];

/// What asked for a reload (`reload::Trigger::as_str`).
pub const RELOAD_TRIGGERS: &[&str] = &["watch", "sighup", "api"];

/// How a reload attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// New sources accepted and served.
    Applied,
    /// The sources were valid and unchanged.
    Unchanged,
    /// The sources were invalid; the previous set is still served.
    Refused,
    /// `--reload-guard refuse-widening` refused a set that widens access.
    WideningRefused,
}

impl ReloadOutcome {
    const ALL: [ReloadOutcome; 4] = [
        ReloadOutcome::Applied,
        ReloadOutcome::Unchanged,
        ReloadOutcome::Refused,
        ReloadOutcome::WideningRefused,
    ];

    /// How `status` ended.
    pub fn of(status: &crate::reload::ReloadStatus) -> ReloadOutcome {
        match (status.ok, status.changed, status.widening_refused) {
            (_, _, true) => ReloadOutcome::WideningRefused,
            (false, _, false) => ReloadOutcome::Refused,
            (true, true, false) => ReloadOutcome::Applied,
            (true, false, false) => ReloadOutcome::Unchanged,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadOutcome::Applied => "applied",
            ReloadOutcome::Unchanged => "unchanged",
            ReloadOutcome::Refused => "refused",
            ReloadOutcome::WideningRefused => "widening_refused",
        }
    }
}

/// A route, as the metrics label it.
#[derive(Debug, Clone, Copy)]
pub struct RouteLabel {
    /// Its method (`GET`).
    pub method: &'static str,
    /// Its path pattern (`/v1/entities/{type}/{id}`).
    pub pattern: &'static str,
    /// Whether it answers decisions (and so counts them and their latency).
    pub decides: bool,
}

/// The series of one decision route.
pub struct DecisionSeries {
    /// Decisions answered Allow.
    pub allow: IntCounter,
    /// Decisions answered Deny.
    pub deny: IntCounter,
    /// Requests past the token check answered with an error instead of decisions.
    pub error: IntCounter,
    /// Time to answer a request, from routing to the rendered answer.
    pub seconds: Histogram,
}

impl DecisionSeries {
    /// Counts one decision.
    pub fn decided(&self, allowed: bool) {
        if allowed {
            self.allow.inc();
        } else {
            self.deny.inc();
        }
    }
}

/// The series of one route.
struct RouteSeries {
    label: RouteLabel,
    /// `http_requests_total` children by [`STATUSES`] index, resolved on first use.
    statuses: Vec<OnceLock<IntCounter>>,
    decisions: Option<DecisionSeries>,
}

/// The daemon's metrics.
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    routes: Vec<RouteSeries>,
    reloads: IntCounterVec,
    connections: IntGaugeVec,
    scraped: Scraped,
    /// One scrape at a time: scrapes bring the read-at-scrape counters up to date.
    scraping: Mutex<()>,
}

/// The values read at scrape time.
struct Scraped {
    policies: IntGauge,
    policies_loaded: Gauge,
    revision: IntGaugeVec,
    entities: IntGaugeVec,
    cache_hits: IntCounter,
    cache_misses: IntCounter,
    cache_entries: IntGauge,
    compact_hits: IntCounter,
    compact_entries: IntGauge,
    activity_written: IntCounter,
    activity_dropped: IntCounter,
    activity_queued: IntGauge,
    reservations_open: IntGauge,
    analyses: IntCounterVec,
    widenings: IntCounter,
    resident_memory: IntGauge,
    open_fds: IntGauge,
    fleet: fleet::FleetGauges,
}

/// What a scrape reads from the rest of the daemon.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Policies in the served set.
    pub policies: usize,
    /// When the served set was loaded.
    pub loaded_at: Option<SystemTime>,
    /// The served revision.
    pub revision: String,
    /// Stored entities by type.
    pub entities: Vec<(String, u64)>,
    /// Entity cache hits, misses (totals) and entries.
    pub cache: (u64, u64, usize),
    /// Hits (total) and entries of the entities kept in compact form.
    pub compact: (u64, usize),
    /// Activity records written, dropped (totals) and queued.
    pub activity: (u64, u64, usize),
    /// Reservations open, when the backend tells.
    pub reservations_open: Option<u64>,
    /// Policy change analyses completed and unavailable, and widenings found (totals).
    pub analysis: (u64, u64, u64),
    /// The replica's standing, in fleet mode.
    pub fleet: Option<FleetSnapshot>,
}

/// A metric could not be registered (a name clash: a bug in this module).
#[derive(Debug, thiserror::Error)]
#[error("registering metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// Registers every metric, with the children of `routes` resolved in advance.
    pub fn new(routes: impl IntoIterator<Item = RouteLabel>) -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| registry.register(c);

        let http_requests = IntCounterVec::new(
            Opts::new(
                "policyd_http_requests_total",
                "HTTP requests answered, by method, route pattern and status.",
            ),
            &["method", "route", "status"],
        )?;
        reg(Box::new(http_requests.clone()))?;
        let decisions = IntCounterVec::new(
            Opts::new(
                "policyd_decisions_total",
                "Decisions answered, by route and result (allow, deny; error counts requests \
                 past the token check answered with an error instead of decisions).",
            ),
            &["route", "result"],
        )?;
        reg(Box::new(decisions.clone()))?;
        let decision_seconds = HistogramVec::new(
            HistogramOpts::new(
                "policyd_decision_duration_seconds",
                "Time to answer a decision request, from routing to the rendered answer.",
            )
            .buckets(DECISION_BUCKETS.to_vec()),
            &["route"],
        )?;
        reg(Box::new(decision_seconds.clone()))?;

        let routes = routes
            .into_iter()
            .map(|label| {
                let decisions = if label.decides {
                    let p = label.pattern;
                    Some(DecisionSeries {
                        allow: decisions.with_label_values(&[p, "allow"]),
                        deny: decisions.with_label_values(&[p, "deny"]),
                        error: decisions.with_label_values(&[p, "error"]),
                        seconds: decision_seconds.with_label_values(&[p]),
                    })
                } else {
                    None
                };
                RouteSeries {
                    label,
                    statuses: STATUSES.iter().map(|_| OnceLock::new()).collect(),
                    decisions,
                }
            })
            .collect();

        let reloads = IntCounterVec::new(
            Opts::new(
                "policyd_policy_reloads_total",
                "Policy reload attempts, by trigger (watch, sighup, api) and outcome (applied, \
                 unchanged, refused, widening_refused).",
            ),
            &["trigger", "outcome"],
        )?;
        reg(Box::new(reloads.clone()))?;
        for trigger in RELOAD_TRIGGERS {
            for outcome in ReloadOutcome::ALL {
                reloads.with_label_values(&[trigger, outcome.as_str()]);
            }
        }

        let connections = IntGaugeVec::new(
            Opts::new(
                "policyd_http_connections_open",
                "Connections open, by the thread serving them (policyd-http-N, one of the \
                 serving threads; runtime, the shared runtime).",
            ),
            &["thread"],
        )?;
        reg(Box::new(connections.clone()))?;

        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let policies_loaded = Gauge::new(
            "policyd_policies_loaded_timestamp_seconds",
            "When the served policy set was loaded, in seconds since the Unix epoch.",
        )?;
        reg(Box::new(policies_loaded.clone()))?;
        let revision = IntGaugeVec::new(
            Opts::new(
                "policyd_policy_revision_info",
                "The served policy revision (its label); always 1.",
            ),
            &["revision"],
        )?;
        reg(Box::new(revision.clone()))?;
        let entities = IntGaugeVec::new(
            Opts::new(
                "policyd_entities_stored",
                "Stored entities, by entity type.",
            ),
            &["type"],
        )?;
        reg(Box::new(entities.clone()))?;
        let analyses = IntCounterVec::new(
            Opts::new(
                "policyd_policy_analyses_total",
                "Policy change analyses run at reload, by outcome (completed; unavailable: no \
                 solver, a crash or the time limit).",
            ),
            &["outcome"],
        )?;
        reg(Box::new(analyses.clone()))?;
        let scraped = Scraped {
            policies: gauge("policyd_policies", "Policies in the served set.")?,
            policies_loaded,
            revision,
            entities,
            cache_hits: counter(
                "policyd_entity_cache_hits_total",
                "Entity reads answered from the entity cache.",
            )?,
            cache_misses: counter(
                "policyd_entity_cache_misses_total",
                "Entity reads that missed the entity cache.",
            )?,
            cache_entries: gauge(
                "policyd_entity_cache_entries",
                "Entities held in the entity cache.",
            )?,
            compact_hits: counter(
                "policyd_entity_cache_compact_hits_total",
                "Entity cache misses answered from the entities kept in compact form.",
            )?,
            compact_entries: gauge(
                "policyd_entity_cache_compact_entries",
                "Entities kept in compact form.",
            )?,
            activity_written: counter(
                "policyd_activity_records_written_total",
                "Activity records committed to the activity log.",
            )?,
            activity_dropped: counter(
                "policyd_activity_records_dropped_total",
                "Activity records dropped because the queue was full.",
            )?,
            activity_queued: gauge(
                "policyd_activity_records_queued",
                "Activity records waiting to be written.",
            )?,
            reservations_open: gauge(
                "policyd_storage_reservations_open",
                "Storage reservations held and not expired.",
            )?,
            analyses,
            widenings: counter(
                "policyd_policy_analysis_widenings_total",
                "Request environments found widened by analysed reloads, summed.",
            )?,
            resident_memory: gauge(
                "policyd_process_resident_memory_bytes",
                "Resident memory of the daemon process.",
            )?,
            open_fds: gauge(
                "policyd_process_open_fds",
                "Open file descriptors of the daemon process.",
            )?,
            fleet: fleet::FleetGauges::register(&registry)?,
        };
        Ok(Metrics {
            registry,
            http_requests,
            routes,
            reloads,
            connections,
            scraped,
            scraping: Mutex::new(()),
        })
    }

    /// Counts one answered request. `route` is the index of the route that served it, or
    /// `None` (no route, or not with this method: then the method and pattern come from
    /// `method` and `pattern`).
    pub fn answered(&self, route: Option<usize>, method: &str, pattern: &str, status: u16) {
        if let Some(series) = route.and_then(|i| self.routes.get(i))
            && let Some(slot) = STATUSES.iter().position(|s| *s == status)
            && let Some(cell) = series.statuses.get(slot)
        {
            cell.get_or_init(|| {
                let status = status.to_string();
                self.http_requests.with_label_values(&[
                    series.label.method,
                    series.label.pattern,
                    &status,
                ])
            })
            .inc();
            return;
        }
        let method = known_method(method);
        let mut digits = [0u8; 3];
        let status = status_text(status, &mut digits);
        self.http_requests
            .with_label_values(&[method, pattern, status])
            .inc();
    }

    /// The decision series of route `route`, when it answers decisions.
    pub fn decisions(&self, route: usize) -> Option<&DecisionSeries> {
        self.routes.get(route).and_then(|r| r.decisions.as_ref())
    }

    /// Counts one reload attempt.
    pub fn reloaded(&self, trigger: &str, outcome: ReloadOutcome) {
        self.reloads
            .with_label_values(&[trigger, outcome.as_str()])
            .inc();
    }

    /// The count of connections open on `thread`, for the server to move.
    pub fn connections(&self, thread: &str) -> IntGauge {
        self.connections.with_label_values(&[thread])
    }

    /// Brings the read-at-scrape values up to date and renders every metric.
    pub fn render(&self, now: Snapshot) -> Result<String, MetricsError> {
        let _one = self.scraping.lock().unwrap_or_else(|p| p.into_inner());
        let s = &self.scraped;
        s.policies.set(clamp(now.policies as u64));
        if let Some(at) = now.loaded_at {
            let secs = at
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_secs_f64();
            s.policies_loaded.set(secs);
        }
        s.revision.reset();
        s.revision.with_label_values(&[&now.revision]).set(1);
        s.entities.reset();
        for (ty, n) in &now.entities {
            s.entities.with_label_values(&[ty]).set(clamp(*n));
        }
        let (hits, misses, entries) = now.cache;
        catch_up(&s.cache_hits, hits);
        catch_up(&s.cache_misses, misses);
        s.cache_entries.set(clamp(entries as u64));
        let (compact_hits, compact_entries) = now.compact;
        catch_up(&s.compact_hits, compact_hits);
        s.compact_entries.set(clamp(compact_entries as u64));
        let (written, dropped, queued) = now.activity;
        catch_up(&s.activity_written, written);
        catch_up(&s.activity_dropped, dropped);
        s.activity_queued.set(clamp(queued as u64));
        if let Some(n) = now.reservations_open {
            s.reservations_open.set(clamp(n));
        }
        let (completed, unavailable, widenings) = now.analysis;
        catch_up(&s.analyses.with_label_values(&["completed"]), completed);
        catch_up(&s.analyses.with_label_values(&["unavailable"]), unavailable);
        catch_up(&s.widenings, widenings);
        if let Some(f) = &now.fleet {
            s.fleet.set(f);
        }
        if let Some(p) = process::read() {
            s.resident_memory.set(clamp(p.resident_bytes));
            s.open_fds.set(clamp(p.open_fds));
        }
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// Raises a counter to `total`, a total kept elsewhere (never lowers it).
fn catch_up(counter: &IntCounter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The method as a label: the standard ones by name, anything else `other` (a client cannot
/// grow the label set).
fn known_method(method: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ];
    KNOWN
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

/// A status as three ASCII digits, without allocating.
fn status_text(status: u16, buf: &mut [u8; 3]) -> &str {
    let s = status.min(999);
    buf[0] = b'0' + (s / 100) as u8;
    buf[1] = b'0' + (s / 10 % 10) as u8;
    buf[2] = b'0' + (s % 10) as u8;
    std::str::from_utf8(buf).unwrap_or("000")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_is_three_digits() {
        let mut b = [0; 3];
        assert_eq!(status_text(200, &mut b), "200");
        assert_eq!(status_text(503, &mut b), "503");
        assert_eq!(status_text(1234, &mut b), "999");
    }

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(known_method("GET"), "GET");
        assert_eq!(known_method("BREW"), "other");
    }

    #[test]
    fn scraped_totals_only_rise() {
        let c = IntCounter::new("t_total", "t").unwrap();
        catch_up(&c, 5);
        catch_up(&c, 3);
        assert_eq!(c.get(), 5);
    }
}
