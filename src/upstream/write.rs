//! Entity writes in the upstream: one transaction each, one revision each.
//!
//! A write first takes the next revision from the counter row (its row lock orders every
//! writer until commit), then changes the entities and their parent edges, appends one change
//! row per entity under its revision, checks for cycles, and notifies the replicas. Either all
//! of it commits or none; a refused delete or cycle rolls back, the revision with it.

use cedar_policy::EntityUid;
use tokio_postgres::Transaction;

use super::{CHANNEL, Upstream, UpstreamError};
use crate::store::Record;

/// The upstream's id and a committed revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// `policyd_revision.upstream_id`.
    pub upstream: String,
    /// The revision the write committed as.
    pub revision: i64,
}

fn key(uid: &EntityUid) -> (String, String) {
    (uid.type_name().to_string(), uid.id().unescaped().to_owned())
}

impl Upstream {
    /// Inserts or replaces `records`, all or nothing, as one revision.
    pub async fn upsert(&self, records: &[Record]) -> Result<Committed, UpstreamError> {
        self.timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let committed = next_revision(&tx).await?;
            upsert_in(&tx, records, committed.revision).await?;
            finish(tx, &committed).await?;
            Ok(committed)
        })
        .await
    }

    /// Removes one entity as one revision; `None` (and no revision) when it was absent.
    pub async fn delete(&self, uid: &EntityUid) -> Result<Option<Committed>, UpstreamError> {
        let (ty, id) = key(uid);
        self.timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let committed = next_revision(&tx).await?;
            let gone = tx
                .execute(
                    "DELETE FROM policyd_entities WHERE etype = $1 AND eid = $2",
                    &[&ty, &id],
                )
                .await?;
            if gone == 0 {
                tx.rollback().await?;
                return Ok(None);
            }
            tx.execute(
                "DELETE FROM policyd_parents WHERE ctype = $1 AND cid = $2",
                &[&ty, &id],
            )
            .await?;
            tx.execute(
                "INSERT INTO policyd_changes (rev, seq, etype, eid, body) VALUES ($1, 1, $2, $3, NULL)",
                &[&committed.revision, &ty, &id],
            )
            .await?;
            finish(tx, &committed).await?;
            Ok(Some(committed))
        })
        .await
    }

    /// Deletes the change rows of every revision older than the newest `keep`; returns the new
    /// oldest revision in the log. Replicas behind it re-copy.
    pub async fn prune(&self, keep: i64) -> Result<i64, UpstreamError> {
        self.timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let oldest: i64 = tx
                .query_one(
                    "UPDATE policyd_revision SET oldest = GREATEST(oldest, rev - $1 + 1)
                     RETURNING oldest",
                    &[&keep.max(0)],
                )
                .await?
                .get(0);
            tx.execute("DELETE FROM policyd_changes WHERE rev < $1", &[&oldest])
                .await?;
            tx.commit().await?;
            Ok(oldest)
        })
        .await
    }
}

/// Takes the next revision. The row lock is held to commit: writers go one at a time.
async fn next_revision(tx: &Transaction<'_>) -> Result<Committed, UpstreamError> {
    let row = tx
        .query_one(
            "UPDATE policyd_revision SET rev = rev + 1 RETURNING upstream_id, rev",
            &[],
        )
        .await?;
    Ok(Committed {
        upstream: row.get(0),
        revision: row.get(1),
    })
}

/// Notifies the replicas and commits.
async fn finish(
    tx: deadpool_postgres::Transaction<'_>,
    committed: &Committed,
) -> Result<(), UpstreamError> {
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANNEL, &committed.revision.to_string()],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Writes `records` and their change rows at `rev`, then refuses the write if it closed a
/// cycle of parents. Statements take whole arrays, so a large write is a few round trips.
pub(super) async fn upsert_in(
    tx: &Transaction<'_>,
    records: &[Record],
    rev: i64,
) -> Result<(), UpstreamError> {
    let mut types = Vec::with_capacity(records.len());
    let mut ids = Vec::with_capacity(records.len());
    let mut bodies = Vec::with_capacity(records.len());
    let mut sizes = Vec::with_capacity(records.len());
    let mut quotas = Vec::with_capacity(records.len());
    let (mut ctypes, mut cids, mut ptypes, mut pids) = (vec![], vec![], vec![], vec![]);
    for r in records {
        let (ty, id) = key(&r.uid);
        for parent in &r.parents {
            let (pty, pid) = key(parent);
            ctypes.push(ty.clone());
            cids.push(id.clone());
            ptypes.push(pty);
            pids.push(pid);
        }
        types.push(ty);
        ids.push(id);
        bodies.push(r.body.as_str());
        sizes.push(r.size);
        quotas.push(r.quota);
    }
    tx.execute(
        "INSERT INTO policyd_entities (etype, eid, body, size, quota, rev)
         SELECT t, i, b, s, q, $6
         FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[]) AS w(t, i, b, s, q)
         ON CONFLICT (etype, eid) DO UPDATE
         SET body = excluded.body, size = excluded.size, quota = excluded.quota, rev = excluded.rev",
        &[&types, &ids, &bodies, &sizes, &quotas, &rev],
    )
    .await?;
    tx.execute(
        "DELETE FROM policyd_parents p USING unnest($1::text[], $2::text[]) AS w(t, i)
         WHERE p.ctype = w.t AND p.cid = w.i",
        &[&types, &ids],
    )
    .await?;
    tx.execute(
        "INSERT INTO policyd_parents (ctype, cid, ptype, pid)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
         ON CONFLICT DO NOTHING",
        &[&ctypes, &cids, &ptypes, &pids],
    )
    .await?;
    tx.execute(
        "INSERT INTO policyd_changes (rev, seq, etype, eid, body)
         SELECT $1, s::integer, t, i, b
         FROM unnest($2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS w(t, i, b, s)",
        &[&rev, &types, &ids, &bodies],
    )
    .await?;
    // Inside the counter row's lock, after every edge is in: a cycle through several entities
    // of this write, or through an earlier one, is found.
    let cycle = tx
        .query_opt(
            "WITH RECURSIVE up (st, si, t, i) AS (
                 SELECT w.t, w.i, p.ptype, p.pid
                 FROM unnest($1::text[], $2::text[]) AS w(t, i)
                 JOIN policyd_parents p ON p.ctype = w.t AND p.cid = w.i
                 UNION
                 SELECT up.st, up.si, p.ptype, p.pid
                 FROM up JOIN policyd_parents p ON p.ctype = up.t AND p.cid = up.i
             )
             SELECT st, si FROM up WHERE t = st AND i = si LIMIT 1",
            &[&ctypes, &cids],
        )
        .await?;
    if let Some(row) = cycle {
        let (ty, id): (String, String) = (row.get(0), row.get(1));
        let shown = crate::uid::from_parts(&ty, &id)
            .map(|u| u.to_string())
            .unwrap_or_else(|_| format!("{ty}::{id:?}"));
        return Err(UpstreamError::Cycle(shown));
    }
    Ok(())
}
