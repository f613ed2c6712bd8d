//! Storage quotas and reservations in the upstream, so they are global to the fleet.
//!
//! What an organization or project uses is summed from the upstream's entities (the items
//! below it, through parent edges); reservations live in `policyd_reservations`. A reservation
//! is checked and inserted in one transaction that first locks the revision row, the lock
//! every entity write holds: reservations from any sidecar, and the writes that change sizes,
//! go one at a time, so together they never exceed a quota.

use cedar_policy::EntityUid;
use tokio_postgres::GenericClient;

use super::{Upstream, UpstreamError};
use crate::storage::{self, ORGANIZATION_TYPE, QuotaCheck, Reservation, ReserveOutcome, Side};

type Key = (String, String);

fn key(uid: &EntityUid) -> Key {
    (uid.type_name().to_string(), uid.id().unescaped().to_owned())
}

fn uid(key: &Key) -> Result<EntityUid, UpstreamError> {
    crate::uid::from_parts(&key.0, &key.1).map_err(|message| {
        UpstreamError::Store(crate::store::StoreError::Corrupt(
            crate::store::codec::DecodeError {
                uid: format!("{}::{:?}", key.0, key.1),
                message,
            },
        ))
    })
}

impl Upstream {
    /// Whether `add` bytes fit a project and its organization; `None` for an unknown project.
    pub async fn check_quota(
        &self,
        project: &EntityUid,
        add: i64,
        now: i64,
    ) -> Result<Option<QuotaCheck>, UpstreamError> {
        let k = key(project);
        self.timed(async {
            let client = self.client().await?;
            check(&**client, &k, add, now).await
        })
        .await
    }

    /// Bytes held by unexpired reservations on an organization or project.
    pub async fn reserved(&self, entity: &EntityUid, now: i64) -> Result<i64, UpstreamError> {
        let k = key(entity);
        self.timed(async {
            let client = self.client().await?;
            reserved(&**client, &k, now).await
        })
        .await
    }

    /// Checks and reserves atomically, across the fleet.
    pub async fn reserve(
        &self,
        project: &EntityUid,
        bytes: i64,
        ttl_micros: i64,
        idempotency_key: Option<&str>,
        now: i64,
    ) -> Result<ReserveOutcome, UpstreamError> {
        let k = key(project);
        self.timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            tx.execute("SELECT 1 FROM policyd_revision FOR UPDATE", &[])
                .await?;
            let outcome = reserve_in(&*tx, &k, bytes, ttl_micros, idempotency_key, now).await?;
            tx.commit().await?;
            Ok(outcome)
        })
        .await
    }

    /// Releases a reservation; `false` when there is none with that id.
    pub async fn release(&self, id: &str) -> Result<bool, UpstreamError> {
        self.timed(async {
            let client = self.client().await?;
            Ok(client
                .execute("DELETE FROM policyd_reservations WHERE id = $1", &[&id])
                .await?
                > 0)
        })
        .await
    }

    /// Deletes up to `limit` expired reservations, returning how many.
    pub async fn sweep_reservations(&self, now: i64, limit: i64) -> Result<u64, UpstreamError> {
        self.timed(async {
            let client = self.client().await?;
            Ok(client
                .execute(
                    "DELETE FROM policyd_reservations WHERE id IN
                     (SELECT id FROM policyd_reservations WHERE expires_at <= $1 LIMIT $2)",
                    &[&now, &limit],
                )
                .await?)
        })
        .await
    }
}

async fn reserved(c: &impl GenericClient, k: &Key, now: i64) -> Result<i64, UpstreamError> {
    let sql = if k.0 == ORGANIZATION_TYPE {
        "SELECT COALESCE(SUM(bytes), 0)::int8 FROM policyd_reservations
         WHERE otype = $1 AND oid = $2 AND expires_at > $3"
    } else {
        "SELECT COALESCE(SUM(bytes), 0)::int8 FROM policyd_reservations
         WHERE ptype = $1 AND pid = $2 AND expires_at > $3"
    };
    Ok(c.query_one(sql, &[&k.0, &k.1, &now]).await?.get(0))
}

/// A project's or organization's side of a check; `None` when it is not stored.
async fn side(c: &impl GenericClient, k: &Key, now: i64) -> Result<Option<Side>, UpstreamError> {
    let Some(row) = c
        .query_opt(
            "SELECT e.quota, (
                 WITH RECURSIVE down (t, i) AS (
                     SELECT ctype, cid FROM policyd_parents WHERE ptype = $1 AND pid = $2
                     UNION
                     SELECT p.ctype, p.cid FROM policyd_parents p
                     JOIN down ON p.ptype = down.t AND p.pid = down.i
                 )
                 SELECT COALESCE(SUM(d.size), 0)::int8 FROM down
                 JOIN policyd_entities d ON d.etype = down.t AND d.eid = down.i
                 WHERE d.size IS NOT NULL
             )
             FROM policyd_entities e WHERE e.etype = $1 AND e.eid = $2",
            &[&k.0, &k.1],
        )
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(Side {
        entity: uid(k)?,
        quota: row.get(0),
        used: row.get(1),
        reserved: reserved(c, k, now).await?,
    }))
}

/// The organization a project belongs to: its first `Organization` parent.
async fn organization_of(c: &impl GenericClient, k: &Key) -> Result<Option<Key>, UpstreamError> {
    Ok(c.query_opt(
        "SELECT ptype, pid FROM policyd_parents WHERE ctype = $1 AND cid = $2 AND ptype = $3
         ORDER BY pid LIMIT 1",
        &[&k.0, &k.1, &ORGANIZATION_TYPE],
    )
    .await?
    .map(|r| (r.get(0), r.get(1))))
}

async fn check(
    c: &impl GenericClient,
    project: &Key,
    add: i64,
    now: i64,
) -> Result<Option<QuotaCheck>, UpstreamError> {
    let Some(project_side) = side(c, project, now).await? else {
        return Ok(None);
    };
    let org_side = match organization_of(c, project).await? {
        Some(org) => side(c, &org, now).await?,
        None => None,
    };
    Ok(Some(storage::check(project_side, org_side, add)))
}

async fn reserve_in(
    c: &impl GenericClient,
    project: &Key,
    bytes: i64,
    ttl_micros: i64,
    idem: Option<&str>,
    now: i64,
) -> Result<ReserveOutcome, UpstreamError> {
    if let Some(k) = idem {
        let existing = c
            .query_opt(
                "SELECT id, ptype, pid, bytes, expires_at FROM policyd_reservations
                 WHERE idem_key = $1",
                &[&k],
            )
            .await?;
        if let Some(row) = existing {
            let p: Key = (row.get(1), row.get(2));
            let found = Reservation {
                id: row.get(0),
                project: uid(&p)?,
                bytes: row.get(3),
                expires_at: row.get(4),
                idempotency_key: Some(k.to_owned()),
            };
            if let Some(answer) = found.asked_again(&uid(project)?, bytes, now) {
                return Ok(answer);
            }
            // An expired reservation no longer holds its key.
            c.execute(
                "DELETE FROM policyd_reservations WHERE id = $1",
                &[&found.id],
            )
            .await?;
        }
    }
    let Some(checked) = check(c, project, bytes, now).await? else {
        return Ok(ReserveOutcome::UnknownProject);
    };
    if !checked.allowed {
        return Ok(ReserveOutcome::Refused(checked));
    }
    let org = organization_of(c, project).await?;
    let expires_at = now.saturating_add(ttl_micros);
    let id: String = c
        .query_one(
            "INSERT INTO policyd_reservations (ptype, pid, otype, oid, bytes, expires_at, idem_key)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            &[
                &project.0,
                &project.1,
                &org.as_ref().map(|o| &o.0),
                &org.as_ref().map(|o| &o.1),
                &bytes,
                &expires_at,
                &idem,
            ],
        )
        .await?
        .get(0);
    Ok(ReserveOutcome::Created(Reservation {
        id,
        project: uid(project)?,
        bytes,
        expires_at,
        idempotency_key: idem.map(str::to_owned),
    }))
}
