//! The fleet-mode gauges: how the replica stands against the upstream. They are registered in
//! every daemon and stay 0 without `--upstream`.

use std::time::Duration;

use prometheus::{Gauge, IntCounter, IntGauge, Registry};

/// The replica's standing, read at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct FleetSnapshot {
    /// Started with `--serve-stale`.
    pub serve_stale: bool,
    /// How long ago the replica last confirmed it was caught up; `None`: never.
    pub since_caught_up: Option<Duration>,
    /// Past `--max-staleness` now (decisions refused, or answered anyway with `--serve-stale`).
    pub stale: bool,
    /// The upstream revision the replica has applied.
    pub applied_revision: i64,
    /// Activity records sent upstream since start.
    pub activity_shipped: u64,
}

pub(super) struct FleetGauges {
    serve_stale: IntGauge,
    stale: IntGauge,
    since_caught_up: Gauge,
    applied_revision: IntGauge,
    shipped: IntCounter,
}

impl FleetGauges {
    pub(super) fn register(registry: &Registry) -> Result<FleetGauges, prometheus::Error> {
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let since_caught_up = Gauge::new(
            "policyd_fleet_caught_up_age_seconds",
            "Seconds since the replica last confirmed it was caught up with the upstream \
             (+Inf: not since start; 0 without --upstream).",
        )?;
        registry.register(Box::new(since_caught_up.clone()))?;
        let shipped = IntCounter::new(
            "policyd_activity_records_shipped_total",
            "Activity records sent to the upstream trail (fleet mode; a record resent after a \
             failure counts again).",
        )?;
        registry.register(Box::new(shipped.clone()))?;
        Ok(FleetGauges {
            serve_stale: gauge(
                "policyd_fleet_serve_stale",
                "1 when started with --serve-stale: decisions are answered even when the replica \
                 may be behind the upstream.",
            )?,
            stale: gauge(
                "policyd_fleet_stale",
                "1 while the replica has not confirmed it is caught up within --max-staleness \
                 (decisions are refused with 503 stale, or answered anyway with --serve-stale).",
            )?,
            since_caught_up,
            applied_revision: gauge(
                "policyd_fleet_applied_revision",
                "The upstream revision the replica has applied.",
            )?,
            shipped,
        })
    }

    pub(super) fn set(&self, f: &FleetSnapshot) {
        self.serve_stale.set(i64::from(f.serve_stale));
        self.stale.set(i64::from(f.stale));
        self.since_caught_up
            .set(f.since_caught_up.map_or(f64::INFINITY, |d| d.as_secs_f64()));
        self.applied_revision.set(f.applied_revision);
        super::catch_up(&self.shipped, f.activity_shipped);
    }
}
