//! The fleet's one activity trail: every sidecar ships its activity records upstream, and
//! `GET /v1/activity` on any sidecar reads the merged trail there.
//!
//! Each sidecar's log has a random name born with it ([`Follower::sidecar`]); a record is
//! known upstream by `(sidecar, id)`, its id in that log. The shipper asks the upstream how
//! far it got (the largest id stored under its name), then sends what follows in batches read
//! by a [`Follower`]; a batch is stored in one transaction that first drops the records
//! already stored, so delivery is at least once (a batch whose commit was not seen is sent
//! again, after a restart too) and storage exactly once. A batch is stored as one row per
//! organization holding its records as JSON ([`Stored`]: numbers, and one dictionary of the
//! names they use): a row per record cost PostgreSQL more CPU than the decisions that made
//! them. The merged trail is read newest first by `(time, sidecar, id)`, which is also its
//! page cursor.
//!
//! The upstream trail is kept for the sidecars' `--activity-retention-days`: each sidecar's
//! shipper deletes the records older than that, every minute.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Fleet, Upstream, UpstreamError};
use crate::activity::{ActivityLog, Batch, Filter, Follower, Kind, Record, Row, Verdict};

/// Records sent upstream in one statement.
const BATCH: usize = 5_000;
/// How often the shipper looks for new records.
const SHIP_EVERY: Duration = Duration::from_secs(1);
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

/// One organization's records of one batch as stored upstream (JSON): each record a row of
/// numbers, `[id, time, kind, verdict, principal, action, resource, reasons, revision]`,
/// whose names are ids into the row's own dictionary `n` (the sidecar log's name ids; 0 is
/// none), and the kind and verdict their positions in [`Kind::ALL`] and [`Verdict::ALL`]
/// (verdict -1: none). Uids repeat across records; stored once per row, a record costs tens
/// of bytes to encode, send and store instead of its uids' text.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    n: BTreeMap<i64, String>,
    r: Vec<[i64; 9]>,
}

impl Stored {
    fn push(&mut self, row: &Row, names: &HashMap<i64, String>) {
        // The organization is the stored row's own column, not in the records.
        let used = [
            row.principal,
            row.action,
            row.resource,
            row.reasons,
            row.revision,
        ];
        for id in used {
            if let Some(text) = names.get(&id) {
                self.n.entry(id).or_insert_with(|| text.clone());
            }
        }
        self.r.push([
            row.id,
            row.time,
            row.kind as i64,
            row.verdict.map_or(-1, |v| v as i64),
            row.principal,
            row.action,
            row.resource,
            row.reasons,
            row.revision,
        ]);
    }

    /// The records, as a sidecar's own log would show them.
    fn records(self, org: &str) -> impl Iterator<Item = Record> {
        let n = self.n;
        self.r
            .into_iter()
            .map(move |[id, time, kind, verdict, p, a, r, why, v]| {
                let name = |id: i64| n.get(&id).cloned();
                let index = |i: i64| usize::try_from(i).ok();
                Record {
                    id,
                    time,
                    kind: index(kind)
                        .and_then(|k| Kind::ALL.get(k).copied())
                        .unwrap_or(Kind::Decision),
                    principal: name(p),
                    action: name(a),
                    resource: name(r),
                    decision: index(verdict)
                        .and_then(|v| Verdict::ALL.get(v))
                        .map(|v| v.as_str().to_owned()),
                    reasons: n
                        .get(&why)
                        .and_then(|t| serde_json::from_str(t).ok())
                        .unwrap_or_default(),
                    policy_revision: name(v),
                    organization: (!org.is_empty()).then(|| org.to_owned()),
                }
            })
    }
}

/// A stored row's records, in either form: [`Stored`], or a list of [`Text`] records (the form
/// of the first fleet builds, read until it expires).
fn read_stored(text: &str, org: &str) -> Result<Vec<Record>, UpstreamError> {
    if text.starts_with('[') {
        let records: Vec<Text> = serde_json::from_str(text).map_err(|e| {
            UpstreamError::Schema(format!("a stored activity row is unreadable: {e}"))
        })?;
        return Ok(records.into_iter().map(|r| r.record(org)).collect());
    }
    let rows: Stored = serde_json::from_str(text)
        .map_err(|e| UpstreamError::Schema(format!("a stored activity row is unreadable: {e}")))?;
    Ok(rows.records(org).collect())
}

/// A record of the first stored form: short keys, names as text.
#[derive(Deserialize)]
struct Text {
    i: i64,
    t: i64,
    k: String,
    p: Option<String>,
    a: Option<String>,
    r: Option<String>,
    d: Option<String>,
    #[serde(default)]
    why: Vec<String>,
    v: Option<String>,
}

impl Text {
    fn record(self, org: &str) -> Record {
        Record {
            id: self.i,
            time: self.t,
            kind: Kind::parse(&self.k).unwrap_or(Kind::Decision),
            principal: self.p,
            action: self.a,
            resource: self.r,
            decision: self.d,
            reasons: self.why,
            policy_revision: self.v,
            organization: (!org.is_empty()).then(|| org.to_owned()),
        }
    }
}

/// The largest record id stored under a sidecar's name (0: none).
const SHIPPED: &str = "SELECT coalesce(max(last_id), 0) FROM policyd_activity WHERE sidecar = $1";

/// The `org` column of policy reloads, which concern every organization.
const EVERY_ORG: &str = "";

impl Upstream {
    /// The largest id stored under `sidecar` (0: none): where its shipping resumes.
    pub async fn shipped(&self, sidecar: &str) -> Result<i64, UpstreamError> {
        self.timed(async {
            let client = self.client().await?;
            let row = client.query_one(SHIPPED, &[&sidecar]).await?;
            Ok(row.get(0))
        })
        .await
    }

    /// Stores the records of `batch` of `sidecar` (ids increasing), skipping those already
    /// stored: one row per organization. Records of no organization (never listed) are not
    /// kept. Returns how many records were new.
    pub async fn ship(&self, sidecar: &str, batch: &Batch) -> Result<u64, UpstreamError> {
        self.timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            // Shippers of one sidecar take turns (the loop and the one at shutdown).
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&sidecar])
                .await?;
            let stored: i64 = tx.query_one(SHIPPED, &[&sidecar]).await?.get(0);
            let fresh: Vec<&Row> = batch.rows.iter().filter(|r| r.id > stored).collect();
            let Some(last_id) = fresh.iter().map(|r| r.id).max() else {
                return Ok(0);
            };
            let mut by_org: BTreeMap<&str, (Stored, i64, i64)> = BTreeMap::new();
            for r in &fresh {
                let org = match (r.kind, batch.names.get(&r.organization)) {
                    (Kind::PolicyReload, _) => EVERY_ORG,
                    (_, Some(org)) => org.as_str(),
                    (_, None) => continue,
                };
                let (rows, newest, oldest) = by_org
                    .entry(org)
                    .or_insert_with(|| (Stored::default(), i64::MIN, i64::MAX));
                rows.push(r, &batch.names);
                *newest = (*newest).max(r.time);
                *oldest = (*oldest).min(r.time);
            }
            let (mut orgs, mut newest, mut oldest, mut payloads) = (vec![], vec![], vec![], vec![]);
            for (org, (rows, new, old)) in &by_org {
                orgs.push(*org);
                newest.push(*new);
                oldest.push(*old);
                payloads.push(serde_json::to_string(rows).map_err(|e| {
                    UpstreamError::Schema(format!("encoding activity records failed: {e}"))
                })?);
            }
            tx.execute(
                "INSERT INTO policyd_activity (sidecar, last_id, org, newest, oldest, records)
                 SELECT $1, $2, * FROM unnest($3::text[], $4::int8[], $5::int8[], $6::text[])
                 ON CONFLICT DO NOTHING",
                &[&sidecar, &last_id, &orgs, &newest, &oldest, &payloads],
            )
            .await?;
            tx.commit().await?;
            Ok(fresh.len() as u64)
        })
        .await
    }

    /// Deletes the merged trail's rows whose every record is older than `cutoff`
    /// (microseconds since the Unix epoch), in chunks; returns how many rows.
    pub async fn expire_activity(&self, cutoff: i64) -> Result<u64, UpstreamError> {
        let mut total = 0;
        loop {
            let n = self
                .timed(async {
                    let client = self.client().await?;
                    Ok(client
                        .execute(
                            "DELETE FROM policyd_activity WHERE ctid IN (
                                 SELECT ctid FROM policyd_activity WHERE newest < $1 LIMIT $2)",
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
    ///
    /// Rows are read newest first by their newest record; every record of a later row is at
    /// most as new as that row's newest, so reading stops once the page's last record is
    /// newer than the next row's newest.
    pub async fn activity(
        &self,
        filter: &Filter,
        cursor: Option<&Cursor>,
    ) -> Result<MergedPage, UpstreamError> {
        // Policy reloads concern every organization: listed unless a filter excludes them.
        let reloads = filter.principal.is_none()
            && filter.resource.is_none()
            && filter.action.is_none()
            && filter.kind.is_none_or(|k| k == Kind::PolicyReload);
        let mut orgs = vec![filter.organization.clone()];
        if reloads {
            orgs.push(EVERY_ORG.to_owned());
        }
        let upper = [cursor.map(|c| c.time), filter.until]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(i64::MAX);
        let lower = filter.since.unwrap_or(i64::MIN);
        let want = filter.limit + 1;
        let key = |s: &Shipped| (s.record.time, s.sidecar.clone(), s.record.id);
        let mut found: Vec<Shipped> = Vec::new();
        let mut below: Option<(i64, String, i64)> = None;
        loop {
            let rows = self
                .timed(async {
                    let client = self.client().await?;
                    Ok(client
                        .query(
                            "SELECT sidecar, last_id, org, newest, records FROM policyd_activity
                             WHERE org = ANY($1) AND oldest <= $2 AND newest >= $3
                               AND ($4::int8 IS NULL OR (newest, sidecar, last_id) < ($4, $5, $6))
                             ORDER BY newest DESC, sidecar DESC, last_id DESC LIMIT $7",
                            &[
                                &orgs,
                                &upper,
                                &lower,
                                &below.as_ref().map(|b| b.0),
                                &below.as_ref().map_or("", |b| b.1.as_str()),
                                &below.as_ref().map_or(0, |b| b.2),
                                &ROWS_PER_READ,
                            ],
                        )
                        .await?)
                })
                .await?;
            let exhausted = rows.len() < ROWS_PER_READ as usize;
            for row in &rows {
                let sidecar: String = row.get(0);
                let org: String = row.get(2);
                let text: String = row.get(4);
                let stored = read_stored(&text, &org)?;
                for record in stored {
                    let shipped = Shipped {
                        sidecar: sidecar.clone(),
                        record,
                    };
                    if admits(filter, cursor, &shipped) {
                        found.push(shipped);
                    }
                }
            }
            found.sort_by_key(|s| std::cmp::Reverse(key(s)));
            found.truncate(want);
            let next_newest = rows.last().map(|r| r.get::<_, i64>(3));
            below = rows
                .last()
                .map(|r| (r.get(3), r.get::<_, String>(0), r.get(1)));
            let full = found.len() == want
                && next_newest.is_some_and(|n| found.last().is_some_and(|l| l.record.time > n));
            if exhausted || full {
                break;
            }
        }
        let next_cursor = if found.len() > filter.limit {
            found.truncate(filter.limit);
            found.last().map(|r| Cursor::of(r).to_string())
        } else {
            None
        };
        Ok(MergedPage {
            records: found,
            next_cursor,
        })
    }
}

/// Rows read per query of [`Upstream::activity`].
const ROWS_PER_READ: i64 = 32;

/// Whether a record of the merged trail passes the filter and lies before the cursor.
fn admits(f: &Filter, cursor: Option<&Cursor>, s: &Shipped) -> bool {
    let r = &s.record;
    let same = |want: &Option<String>, got: &Option<String>| {
        want.as_ref().is_none_or(|w| got.as_ref() == Some(w))
    };
    same(&f.principal, &r.principal)
        && same(&f.resource, &r.resource)
        && same(&f.action, &r.action)
        && f.kind.is_none_or(|k| k == r.kind)
        && f.since.is_none_or(|t| r.time >= t)
        && f.until.is_none_or(|t| r.time <= t)
        && cursor
            .is_none_or(|c| (r.time, s.sidecar.as_str(), r.id) < (c.time, c.sidecar.as_str(), c.id))
}

/// A follower of the log, shared by the shipping loop and the last shipment at shutdown.
pub type SharedFollower = Arc<Mutex<Follower>>;

/// Opens a follower of `log` for shipping; `None` when the log is off, or (logged) unreadable.
pub async fn follower(log: &Arc<ActivityLog>) -> Option<SharedFollower> {
    let log = log.clone();
    match tokio::task::spawn_blocking(move || log.follow()).await {
        Ok(Ok(f)) => f.map(|f| Arc::new(Mutex::new(f))),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read the activity log: its records stay local");
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "activity shipping task failed");
            None
        }
    }
}

/// Ships this sidecar's activity records upstream until the runtime stops: every
/// [`SHIP_EVERY`], whatever the log committed since the last batch the upstream confirmed;
/// every [`EXPIRE_EVERY`], deletes the trail's records older than `retention`.
pub async fn ship_forever(fleet: Arc<Fleet>, log: Arc<ActivityLog>, retention: Duration) {
    let Some(follower) = follower(&log).await else {
        return;
    };
    let sidecar = lock(&follower).sidecar().to_owned();
    tracing::info!(%sidecar, "activity: shipping records to the upstream trail");
    let mut shipped = None;
    let mut failing = false;
    let mut tick = tokio::time::interval(SHIP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut expiry = tokio::time::interval(EXPIRE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                match ship_pending(&fleet, &follower, &mut shipped).await {
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
    follower: &SharedFollower,
    shipped: &mut Option<i64>,
) -> Result<u64, UpstreamError> {
    let upstream = fleet.upstream();
    let sidecar = lock(follower).sidecar().to_owned();
    let mut from = match *shipped {
        Some(id) => id,
        None => upstream.shipped(&sidecar).await?,
    };
    let mut new = 0;
    loop {
        let reader = follower.clone();
        let batch = tokio::task::spawn_blocking(move || lock(&reader).after(from, BATCH))
            .await
            .map_err(|e| UpstreamError::Schema(format!("activity read task failed: {e}")))??;
        let Some(last) = batch.rows.last() else {
            *shipped = Some(from);
            return Ok(new);
        };
        let last = last.id;
        new += upstream.ship(&sidecar, &batch).await?;
        fleet.count_shipped(batch.rows.len());
        from = last;
        *shipped = Some(from);
        if batch.rows.len() < BATCH {
            return Ok(new);
        }
    }
}

/// The follower, whoever held it before (it holds no state a panic could leave half made).
fn lock(follower: &SharedFollower) -> std::sync::MutexGuard<'_, Follower> {
    follower.lock().unwrap_or_else(|p| p.into_inner())
}
