//! Entity writes in the upstream: one transaction each, one revision each.
//!
//! A write first takes the next revision from the counter row (its row lock orders every
//! writer until commit), then changes the entities and their parent edges, appends one change
//! row per entity under its revision, checks for cycles, and notifies the replicas. Either all
//! of it commits or none; a refused delete or cycle rolls back, the revision with it.
//!
//! The row lock is held for the whole transaction, so its round trips are the write path's
//! cost: an upsert's statements are prepared once per connection and sent together (pipelined,
//! in order), so it takes three round trips (begin, the statements, commit) whatever its size.

use cedar_policy::EntityUid;
use deadpool_postgres::Transaction;
use tokio_postgres::Statement;
use tokio_postgres::types::ToSql;

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
        let rows = Rows::of(records);
        self.timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let st = Statements::prepare(&tx).await?;
            // One round trip: the counter first, then the write, then the notification, in
            // that order on the connection (statements prepared, so each is sent when polled).
            let (row, (), ()) = tokio::try_join!(
                async { Ok::<_, UpstreamError>(tx.query_one(&st.next_revision, &[]).await?) },
                rows.write(&tx, &st, 0),
                async { Ok(tx.execute(&st.notify, &[&CHANNEL]).await.map(drop)?) },
            )?;
            tx.commit().await?;
            Ok(Committed {
                upstream: row.get(0),
                revision: row.get(1),
            })
        })
        .await
    }

    /// Commits several writes as one revision, each all or nothing on its own: a write that
    /// closes a cycle or that the server refuses is rolled back to its savepoint and answered
    /// with its error, the others commit. `None` (no revision taken) when every write failed.
    pub async fn upsert_each(
        &self,
        writes: &[&[Record]],
    ) -> Result<(Option<Committed>, Vec<Result<(), UpstreamError>>), UpstreamError> {
        self.timed(async {
            let mut client = self.client().await?;
            let mut tx = client.transaction().await?;
            let st = Statements::prepare(&tx).await?;
            let row = tx.query_one(&st.next_revision, &[]).await?;
            let mut outcomes = Vec::with_capacity(writes.len());
            let mut seq = 0;
            for records in writes {
                let savepoint = tx.savepoint("write").await?;
                match Rows::of(records).write(&savepoint, &st, seq).await {
                    Ok(()) => {
                        savepoint.commit().await?;
                        seq += i32::try_from(records.len()).unwrap_or(i32::MAX);
                        outcomes.push(Ok(()));
                    }
                    Err(e) if e.one_write_may_cause() => {
                        savepoint.rollback().await?;
                        outcomes.push(Err(e));
                    }
                    Err(e) => return Err(e),
                }
            }
            if outcomes.iter().all(Result::is_err) {
                tx.rollback().await?;
                return Ok((None, outcomes));
            }
            tx.execute(&st.notify, &[&CHANNEL]).await?;
            tx.commit().await?;
            Ok((
                Some(Committed {
                    upstream: row.get(0),
                    revision: row.get(1),
                }),
                outcomes,
            ))
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
            finish(tx).await?;
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
    let row = tx.query_one(NEXT_REVISION, &[]).await?;
    Ok(Committed {
        upstream: row.get(0),
        revision: row.get(1),
    })
}

/// Notifies the replicas and commits.
async fn finish(tx: Transaction<'_>) -> Result<(), UpstreamError> {
    tx.execute(NOTIFY, &[&CHANNEL]).await?;
    tx.commit().await?;
    Ok(())
}

const NEXT_REVISION: &str = "UPDATE policyd_revision SET rev = rev + 1 RETURNING upstream_id, rev";
/// The revision this transaction took (the counter row, as this transaction left it).
const NOTIFY: &str = "SELECT pg_notify($1, (SELECT rev::text FROM policyd_revision))";

/// The statements of an upsert, prepared once per pooled connection and then taken from its
/// cache: a prepared statement is sent the moment its future is first polled, which is what
/// lets a write's statements go out together, in order, in one round trip.
struct Statements {
    next_revision: Statement,
    entities: Statement,
    unlink: Statement,
    link: Statement,
    changes: Statement,
    cycle: Statement,
    notify: Statement,
}

impl Statements {
    async fn prepare(tx: &Transaction<'_>) -> Result<Statements, UpstreamError> {
        // Each statement's revision is the counter row as this transaction left it.
        let (next_revision, entities, unlink, link, changes, cycle, notify) = tokio::try_join!(
            tx.prepare_cached(NEXT_REVISION),
            tx.prepare_cached(
                "INSERT INTO policyd_entities (etype, eid, body, size, quota, rev)
                 SELECT t, i, b, s, q, (SELECT rev FROM policyd_revision)
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[])
                     AS w(t, i, b, s, q)
                 ON CONFLICT (etype, eid) DO UPDATE
                 SET body = excluded.body, size = excluded.size, quota = excluded.quota,
                     rev = excluded.rev",
            ),
            tx.prepare_cached(
                "DELETE FROM policyd_parents p USING unnest($1::text[], $2::text[]) AS w(t, i)
                 WHERE p.ctype = w.t AND p.cid = w.i",
            ),
            tx.prepare_cached(
                "INSERT INTO policyd_parents (ctype, cid, ptype, pid)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
                 ON CONFLICT DO NOTHING",
            ),
            tx.prepare_cached(
                "INSERT INTO policyd_changes (rev, seq, etype, eid, body)
                 SELECT (SELECT rev FROM policyd_revision), s::integer + $4, t, i, b
                 FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS w(t, i, b, s)",
            ),
            // After every edge is in: a cycle through several entities of this write, or
            // through an earlier one, is found. A cycle has a new edge, whose child is on it
            // and so is some entity's parent: the walk starts only from written entities
            // that have children (leaves, most of a bulk write, cannot close one).
            tx.prepare_cached(
                "WITH RECURSIVE up (st, si, t, i) AS (
                     SELECT w.t, w.i, p.ptype, p.pid
                     FROM unnest($1::text[], $2::text[]) AS w(t, i)
                     JOIN policyd_parents p ON p.ctype = w.t AND p.cid = w.i
                     WHERE EXISTS (SELECT 1 FROM policyd_parents c
                                   WHERE c.ptype = w.t AND c.pid = w.i)
                     UNION
                     SELECT up.st, up.si, p.ptype, p.pid
                     FROM up JOIN policyd_parents p ON p.ctype = up.t AND p.cid = up.i
                 )
                 SELECT st, si FROM up WHERE t = st AND i = si LIMIT 1",
            ),
            tx.prepare_cached(NOTIFY),
        )?;
        Ok(Statements {
            next_revision,
            entities,
            unlink,
            link,
            changes,
            cycle,
            notify,
        })
    }
}

/// A write's entities as the statements' array parameters.
struct Rows<'a> {
    types: Vec<String>,
    ids: Vec<String>,
    bodies: Vec<&'a str>,
    sizes: Vec<Option<i64>>,
    quotas: Vec<Option<i64>>,
    /// Parent edges: child type and id, parent type and id.
    edges: [Vec<String>; 4],
}

impl<'a> Rows<'a> {
    fn of(records: &'a [Record]) -> Rows<'a> {
        let mut rows = Rows {
            types: Vec::with_capacity(records.len()),
            ids: Vec::with_capacity(records.len()),
            bodies: Vec::with_capacity(records.len()),
            sizes: Vec::with_capacity(records.len()),
            quotas: Vec::with_capacity(records.len()),
            edges: Default::default(),
        };
        for r in records {
            let (ty, id) = key(&r.uid);
            for parent in &r.parents {
                let (pty, pid) = key(parent);
                let [ctypes, cids, ptypes, pids] = &mut rows.edges;
                ctypes.push(ty.clone());
                cids.push(id.clone());
                ptypes.push(pty);
                pids.push(pid);
            }
            rows.types.push(ty);
            rows.ids.push(id);
            rows.bodies.push(r.body.as_str());
            rows.sizes.push(r.size);
            rows.quotas.push(r.quota);
        }
        rows
    }

    /// Writes the entities, their parent edges and their change rows (numbered from
    /// `first_seq + 1`) at the transaction's revision, in one round trip, then refuses the
    /// write if it closed a cycle of parents.
    async fn write(
        &self,
        tx: &Transaction<'_>,
        st: &Statements,
        first_seq: i32,
    ) -> Result<(), UpstreamError> {
        let [ctypes, cids, ptypes, pids] = &self.edges;
        let entities: [&(dyn ToSql + Sync); 5] = [
            &self.types,
            &self.ids,
            &self.bodies,
            &self.sizes,
            &self.quotas,
        ];
        let unlink: [&(dyn ToSql + Sync); 2] = [&self.types, &self.ids];
        let link: [&(dyn ToSql + Sync); 4] = [ctypes, cids, ptypes, pids];
        let changes: [&(dyn ToSql + Sync); 4] = [&self.types, &self.ids, &self.bodies, &first_seq];
        let cycle: [&(dyn ToSql + Sync); 2] = [ctypes, cids];
        let (_, _, _, _, cycle) = tokio::try_join!(
            tx.execute(&st.entities, &entities),
            tx.execute(&st.unlink, &unlink),
            tx.execute(&st.link, &link),
            tx.execute(&st.changes, &changes),
            tx.query_opt(&st.cycle, &cycle),
        )?;
        if let Some(row) = cycle {
            let (ty, id): (String, String) = (row.get(0), row.get(1));
            let shown = crate::uid::from_parts(&ty, &id)
                .map(|u| u.to_string())
                .unwrap_or_else(|_| format!("{ty}::{id:?}"));
            return Err(UpstreamError::Cycle(shown));
        }
        Ok(())
    }
}
