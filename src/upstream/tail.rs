//! The replica tail: keeps the local store equal to the upstream, revision by revision.
//!
//! It holds one connection of its own, LISTENing on [`super::CHANNEL`]; a notification (or a
//! request waiting for a revision, or the poll interval) wakes it, and it reads what it has
//! not applied in a REPEATABLE READ transaction: the counter row, then either the change rows
//! after its revision or, when it is new, far behind, ahead (a restored upstream), following
//! another upstream or behind the pruned part of the log, a snapshot of every entity. Polling
//! by revision is the truth; a lost notification only delays a change to the next poll. Each
//! batch is applied through [`Store::replicate`], in one local transaction with its position.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, IsolationLevel};

use super::{CHANNEL, Fleet, UpstreamError, schema};
use crate::store::replica::{Position, Replicated};
use crate::store::{Record, Store, StoreError, codec};

/// A replica further behind than this many revisions copies a snapshot instead of replaying.
const COPY_AFTER: i64 = 100_000;
/// Most revisions applied in one local transaction.
const REVISIONS_PER_BATCH: i64 = 1_000;
/// Longest a snapshot copy may take.
const COPY_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause before reconnecting after the tail broke.
const RETRY: Duration = Duration::from_millis(250);

/// Follows the upstream forever, reconnecting after any failure. Stops with the runtime.
pub async fn run(fleet: Arc<Fleet>, store: Arc<Store>) {
    let mut failing = false;
    loop {
        let err = follow(&fleet, &store, &mut failing).await;
        if !failing {
            tracing::warn!(error = %err, "upstream: the replica lost the upstream; reconnecting");
        } else {
            tracing::debug!(error = %err, "upstream: still unreachable");
        }
        failing = true;
        tokio::time::sleep(RETRY).await;
    }
}

/// One connection's worth of following; returns why it ended.
async fn follow(fleet: &Arc<Fleet>, store: &Arc<Store>, failing: &mut bool) -> UpstreamError {
    match follow_inner(fleet, store, failing).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

async fn follow_inner(
    fleet: &Arc<Fleet>,
    store: &Arc<Store>,
    failing: &mut bool,
) -> Result<std::convert::Infallible, UpstreamError> {
    let upstream = fleet.upstream();
    let waker = fleet.clone();
    let (mut client, driver) = upstream
        .timed(upstream.connect_listening(move || waker.wake.notify_one()))
        .await?;
    let _driver = AbortOnDrop(driver);
    upstream
        .timed(async {
            schema::check(&client).await?;
            client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
            Ok(())
        })
        .await?;
    loop {
        catch_up(&mut client, fleet, store).await?;
        if *failing {
            tracing::info!(
                revision = fleet.applied().revision,
                "upstream: the replica is caught up again"
            );
            *failing = false;
        }
        tokio::select! {
            () = fleet.wake.notified() => {}
            () = tokio::time::sleep(fleet.poll_every()) => {}
        }
    }
}

/// Applies batches until the replica has the upstream's latest revision.
async fn catch_up(
    client: &mut Client,
    fleet: &Fleet,
    store: &Arc<Store>,
) -> Result<(), UpstreamError> {
    loop {
        let began = Instant::now();
        let applied = fleet.applied();
        let step = tokio::time::timeout(COPY_TIMEOUT, read_step(client, fleet, &applied))
            .await
            .map_err(|_| UpstreamError::Timeout(COPY_TIMEOUT))??;
        let Some((batch, head)) = step else {
            fleet.confirm(began);
            return Ok(());
        };
        let position = batch.position.clone();
        let (reset, n) = (batch.reset, batch.upserts.len() + batch.deletes.len());
        let target = store.clone();
        tokio::task::spawn_blocking(move || target.replicate(&batch))
            .await
            .map_err(|e| UpstreamError::Schema(format!("replica apply task failed: {e}")))??;
        fleet.advance(&position);
        if reset {
            tracing::info!(
                upstream = %position.upstream,
                revision = position.revision,
                entities = n,
                "upstream: the replica copied a snapshot"
            );
        } else {
            tracing::debug!(
                revision = position.revision,
                changes = n,
                "upstream: applied"
            );
        }
        if position.revision >= head {
            fleet.confirm(began);
            return Ok(());
        }
    }
}

/// What to apply next, with the upstream's head revision; `None` when caught up.
async fn read_step(
    client: &mut Client,
    fleet: &Fleet,
    applied: &super::fleet::Applied,
) -> Result<Option<(Replicated, i64)>, UpstreamError> {
    let upstream = fleet.upstream();
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let row = upstream
        .timed(async {
            Ok(tx
                .query_one("SELECT upstream_id, rev, oldest FROM policyd_revision", &[])
                .await?)
        })
        .await?;
    let (id, head, oldest): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
    let rev = applied.revision;
    let same = applied.upstream.as_deref() == Some(id.as_str());
    if same && rev == head {
        return Ok(None);
    }
    let batch = if !same || rev > head || rev + 1 < oldest || head - rev > COPY_AFTER {
        // A snapshot, consistent with `head` (one REPEATABLE READ transaction).
        let rows = tx
            .query("SELECT etype, eid, body FROM policyd_entities", &[])
            .await?;
        let mut upserts = Vec::with_capacity(rows.len());
        for row in rows {
            upserts.push(record(row.get(0), row.get(1), row.get(2))?);
        }
        Replicated {
            position: Position {
                upstream: id,
                revision: head,
            },
            reset: true,
            upserts,
            deletes: vec![],
        }
    } else {
        let upper = head.min(rev + REVISIONS_PER_BATCH);
        let rows = upstream
            .timed(async {
                Ok(tx
                    .query(
                        "SELECT etype, eid, body FROM policyd_changes
                         WHERE rev > $1 AND rev <= $2 ORDER BY rev, seq",
                        &[&rev, &upper],
                    )
                    .await?)
            })
            .await?;
        // The net effect: each entity as its last change in the range left it.
        let mut last: BTreeMap<(String, String), Option<String>> = BTreeMap::new();
        for row in rows {
            last.insert((row.get(0), row.get(1)), row.get(2));
        }
        let (mut upserts, mut deletes) = (vec![], vec![]);
        for ((ty, id), body) in last {
            match body {
                Some(body) => upserts.push(record(ty, id, body)?),
                None => deletes.push(uid(&ty, &id)?),
            }
        }
        Replicated {
            position: Position {
                upstream: id,
                revision: upper,
            },
            reset: false,
            upserts,
            deletes,
        }
    };
    tx.commit().await?;
    Ok(Some((batch, head)))
}

fn uid(ty: &str, id: &str) -> Result<cedar_policy::EntityUid, UpstreamError> {
    crate::uid::from_parts(ty, id).map_err(|message| {
        UpstreamError::Store(StoreError::Corrupt(codec::DecodeError {
            uid: format!("{ty}::{id:?}"),
            message,
        }))
    })
}

fn record(ty: String, id: String, body: String) -> Result<Record, UpstreamError> {
    let uid = uid(&ty, &id)?;
    Ok(Record::from_stored(uid, body).map_err(StoreError::from)?)
}

/// Stops the connection's task when the tail lets go of it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
