//! The fleet's one activity trail: every sidecar ships its activity records upstream, and
//! `GET /v1/activity` on any sidecar reads the merged trail there.
//!
//! Each sidecar's log has a random name born with it ([`ActivityLog::sidecar`]); a record is
//! stored upstream under `(sidecar, id)`, its id in that log. The shipper asks the upstream
//! how far it got (the largest id stored under its name), then sends what follows in batches,
//! each one `INSERT ... ON CONFLICT DO NOTHING`: delivery is at least once (a batch whose
//! commit was not seen is sent again, after a restart too), storage exactly once. The merged
//! trail is read newest first by `(time, sidecar, id)`, which is also its page cursor.
//!
//! The upstream trail is kept for the sidecars' `--activity-retention-days`: each sidecar's
//! shipper deletes the records older than that, every minute.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::ToSql;

use super::{Fleet, Upstream, UpstreamError};
use crate::activity::{ActivityLog, Filter, Kind, Record};

/// Records sent upstream in one statement.
const BATCH: usize = 1_000;
/// How often the shipper looks for new records.
const SHIP_EVERY: Duration = Duration::from_millis(250);
/// How often the shipper deletes records past the retention.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);
/// Most records one expiry statement deletes.
const EXPIRE_CHUNK: i64 = 10_000;

/// A record of the merged trail: the sidecar that wrote it, and the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shipped {
    /// The name of the sidecar's log.
    pub sidecar: String,
    /// The record, with its id in that log.
    pub record: Record,
}

/// One page of the merged trail, newest first.
#[derive(Debug, Clone)]
pub struct MergedPage {
    /// The records.
    pub records: Vec<Shipped>,
    /// Where the next page starts, when there is one.
    pub next_cursor: Option<String>,
}

/// A position in the merged trail: records strictly older than it come next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    time: i64,
    sidecar: String,
    id: i64,
}

impl Cursor {
    /// Parses a `next_cursor` of a previous page; `None` when it is not one.
    pub fn parse(text: &str) -> Option<Cursor> {
        let mut parts = text.split('.');
        let (Some(time), Some(sidecar), Some(id), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let hex = sidecar.len() == 16 && sidecar.bytes().all(|b| b.is_ascii_hexdigit());
        Some(Cursor {
            time: time.parse().ok()?,
            sidecar: hex.then(|| sidecar.to_owned())?,
            id: id.parse().ok()?,
        })
    }

    fn of(s: &Shipped) -> Cursor {
        Cursor {
            time: s.record.time,
            sidecar: s.sidecar.clone(),
            id: s.record.id,
        }
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.time, self.sidecar, self.id)
    }
}

impl Upstream {
    /// The largest id stored under `sidecar` (0: none): where its shipping resumes.
    pub async fn shipped(&self, sidecar: &str) -> Result<i64, UpstreamError> {
        self.timed(async {
            let client = self.client().await?;
            let row = client
                .query_one(
                    "SELECT coalesce(max(id), 0) FROM policyd_activity WHERE sidecar = $1",
                    &[&sidecar],
                )
                .await?;
            Ok(row.get(0))
        })
        .await
    }

    /// Stores `records` of `sidecar` in one statement; those already stored are skipped.
    /// Returns how many were new.
    pub async fn ship(&self, sidecar: &str, records: &[Record]) -> Result<u64, UpstreamError> {
        let mut ids = Vec::with_capacity(records.len());
        let mut times = Vec::with_capacity(records.len());
        let mut kinds = Vec::with_capacity(records.len());
        let mut orgs = Vec::with_capacity(records.len());
        let mut principals = Vec::with_capacity(records.len());
        let mut actions = Vec::with_capacity(records.len());
        let mut resources = Vec::with_capacity(records.len());
        let mut decisions = Vec::with_capacity(records.len());
        let mut reasons = Vec::with_capacity(records.len());
        let mut revisions = Vec::with_capacity(records.len());
        for r in records {
            ids.push(r.id);
            times.push(r.time);
            kinds.push(r.kind.as_str());
            orgs.push(r.organization.as_deref());
            principals.push(r.principal.as_deref());
            actions.push(r.action.as_deref());
            resources.push(r.resource.as_deref());
            decisions.push(r.decision.as_deref());
            reasons.push(serde_json::to_string(&r.reasons).unwrap_or_else(|_| "[]".to_owned()));
            revisions.push(r.policy_revision.as_deref());
        }
        self.timed(async {
            let client = self.client().await?;
            let n = client
                .execute(
                    "INSERT INTO policyd_activity
                         (sidecar, id, time, kind, org, principal, action, resource, decision,
                          reasons, policy_revision)
                     SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::text[],
                         $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[])
                     ON CONFLICT (sidecar, id) DO NOTHING",
                    &[
                        &sidecar,
                        &ids,
                        &times,
                        &kinds,
                        &orgs,
                        &principals,
                        &actions,
                        &resources,
                        &decisions,
                        &reasons,
                        &revisions,
                    ],
                )
                .await?;
            Ok(n)
        })
        .await
    }

    /// Deletes the merged trail's records older than `cutoff` (microseconds since the Unix
    /// epoch), in chunks; returns how many.
    pub async fn expire_activity(&self, cutoff: i64) -> Result<u64, UpstreamError> {
        let mut total = 0;
        loop {
            let n = self
                .timed(async {
                    let client = self.client().await?;
                    Ok(client
                        .execute(
                            "DELETE FROM policyd_activity WHERE ctid IN (
                                 SELECT ctid FROM policyd_activity WHERE time < $1 LIMIT $2)",
                            &[&cutoff, &EXPIRE_CHUNK],
                        )
                        .await?)
                })
                .await?;
            total += n;
            if n < EXPIRE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    /// One page of the merged trail, newest first, as [`Filter`] says (its `before_id` is
    /// not used: `cursor` is this trail's position).
    pub async fn activity(
        &self,
        filter: &Filter,
        cursor: Option<&Cursor>,
    ) -> Result<MergedPage, UpstreamError> {
        let mut rows = self
            .timed(select(self, filter, cursor, Select::Organization))
            .await?;
        // Policy reloads concern every organization: listed unless a filter excludes them.
        let reloads = filter.principal.is_none()
            && filter.resource.is_none()
            && filter.action.is_none()
            && filter.kind.is_none_or(|k| k == Kind::PolicyReload);
        if reloads {
            rows.extend(
                self.timed(select(self, filter, cursor, Select::Reloads))
                    .await?,
            );
            // Newest first, as PostgreSQL orders them ("C" collation: byte-wise, like `str`).
            let key = |s: &Shipped| (s.record.time, s.sidecar.clone(), s.record.id);
            rows.sort_by_key(|s| std::cmp::Reverse(key(s)));
        }
        rows.truncate(filter.limit + 1);
        let next_cursor = if rows.len() > filter.limit {
            rows.truncate(filter.limit);
            rows.last().map(|r| Cursor::of(r).to_string())
        } else {
            None
        };
        Ok(MergedPage {
            records: rows,
            next_cursor,
        })
    }
}

/// Which rows a [`select`] reads.
#[derive(Clone, Copy)]
enum Select {
    /// The organization's own records.
    Organization,
    /// Policy reloads (every organization's).
    Reloads,
}

/// Up to `limit + 1` rows newest first.
async fn select(
    upstream: &Upstream,
    f: &Filter,
    cursor: Option<&Cursor>,
    which: Select,
) -> Result<Vec<Shipped>, UpstreamError> {
    let mut sql = String::from(
        "SELECT sidecar, id, time, kind, principal, action, resource, decision, reasons,
                policy_revision, org
         FROM policyd_activity WHERE ",
    );
    let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut arg = |sql: &mut String, clause: &str, value: Box<dyn ToSql + Sync + Send>| {
        args.push(value);
        sql.push_str(&clause.replace('?', &format!("${}", args.len())));
    };
    match which {
        Select::Organization => arg(&mut sql, "org = ?", Box::new(f.organization.clone())),
        Select::Reloads => sql.push_str("kind = 'policy_reload'"),
    }
    for (column, value) in [
        ("principal", &f.principal),
        ("resource", &f.resource),
        ("action", &f.action),
    ] {
        if let Some(v) = value {
            arg(&mut sql, &format!(" AND {column} = ?"), Box::new(v.clone()));
        }
    }
    if let Some(k) = f.kind {
        arg(&mut sql, " AND kind = ?", Box::new(k.as_str()));
    }
    if let Some(s) = f.since {
        arg(&mut sql, " AND time >= ?", Box::new(s));
    }
    if let Some(u) = f.until {
        arg(&mut sql, " AND time <= ?", Box::new(u));
    }
    if let Some(c) = cursor {
        arg(&mut sql, " AND (time, sidecar, id) < (?", Box::new(c.time));
        arg(&mut sql, ", ?", Box::new(c.sidecar.clone()));
        arg(&mut sql, ", ?)", Box::new(c.id));
    }
    sql.push_str(" ORDER BY time DESC, sidecar DESC, id DESC");
    arg(
        &mut sql,
        " LIMIT ?",
        Box::new(i64::try_from(f.limit + 1).unwrap_or(i64::MAX)),
    );
    let client = upstream.client().await?;
    let params: Vec<&(dyn ToSql + Sync)> = args
        .iter()
        .map(|a| a.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = client.query(&sql, &params).await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let kind: String = row.get(3);
            let reasons: String = row.get(8);
            Shipped {
                sidecar: row.get(0),
                record: Record {
                    id: row.get(1),
                    time: row.get(2),
                    kind: Kind::parse(&kind).unwrap_or(Kind::Decision),
                    principal: row.get(4),
                    action: row.get(5),
                    resource: row.get(6),
                    decision: row.get(7),
                    reasons: serde_json::from_str(&reasons).unwrap_or_default(),
                    policy_revision: row.get(9),
                    organization: row.get(10),
                },
            }
        })
        .collect())
}

/// Ships this sidecar's activity records upstream until the runtime stops: every
/// [`SHIP_EVERY`], whatever the log committed since the last batch the upstream confirmed;
/// every [`EXPIRE_EVERY`], deletes the trail's records older than `retention`.
pub async fn ship_forever(fleet: Arc<Fleet>, log: Arc<ActivityLog>, retention: Duration) {
    let reader = log.clone();
    let sidecar = match tokio::task::spawn_blocking(move || reader.sidecar()).await {
        Ok(Ok(Some(name))) => name,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read the activity log's name: its records stay local");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "activity shipping task failed");
            return;
        }
    };
    tracing::info!(%sidecar, "activity: shipping records to the upstream trail");
    let mut shipped = None;
    let mut failing = false;
    let mut tick = tokio::time::interval(SHIP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut expiry = tokio::time::interval(EXPIRE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                match ship_pending(&fleet, &log, &sidecar, &mut shipped).await {
                    Ok(_) if failing => {
                        tracing::info!("activity: shipping to the upstream resumed");
                        failing = false;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "activity: shipping to the upstream failed; retrying");
                        }
                        failing = true;
                        shipped = None;
                    }
                }
            }
            _ = expiry.tick() => {
                let cutoff = crate::storage::now_micros()
                    - i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
                match fleet.upstream().expire_activity(cutoff).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(expired = n, "activity: expired records of the upstream trail"),
                    Err(e) => tracing::debug!(error = %e, "activity: expiring the upstream trail failed"),
                }
            }
        }
    }
}

/// Ships everything the log has committed past `shipped` (asking the upstream where it stands
/// when `shipped` is unknown); returns how many records were new upstream.
pub async fn ship_pending(
    fleet: &Fleet,
    log: &Arc<ActivityLog>,
    sidecar: &str,
    shipped: &mut Option<i64>,
) -> Result<u64, UpstreamError> {
    let upstream = fleet.upstream();
    let mut from = match *shipped {
        Some(id) => id,
        None => upstream.shipped(sidecar).await?,
    };
    let mut new = 0;
    loop {
        let reader = log.clone();
        let batch = tokio::task::spawn_blocking(move || reader.after(from, BATCH))
            .await
            .map_err(|e| UpstreamError::Schema(format!("activity read task failed: {e}")))??;
        let Some(last) = batch.last() else {
            *shipped = Some(from);
            return Ok(new);
        };
        let last = last.id;
        new += upstream.ship(sidecar, &batch).await?;
        fleet.count_shipped(batch.len());
        from = last;
        *shipped = Some(from);
        if batch.len() < BATCH {
            return Ok(new);
        }
    }
}
