//! policyd's tables in the upstream PostgreSQL database, and their migrations.
//!
//! - `policyd_revision`: the one counter row. Every write transaction starts with
//!   `UPDATE policyd_revision SET rev = rev + 1 RETURNING rev`; the row lock it takes orders
//!   writers, so revisions are dense and commit in revision order. It also names the upstream
//!   (`upstream_id`, random at creation) and the oldest revision still in the change log.
//! - `policyd_entities` and `policyd_parents`: the entities as they are now (parents as edges,
//!   for the cycle check and the quota sums).
//! - `policyd_changes`: the full change rows of each revision (a body, or NULL for a delete).
//! - `policyd_reservations`: storage reservations, decided upstream so quotas are global.
//! - `policyd_activity` (version 2): the fleet's one activity trail. A row holds the records
//!   of one organization from one shipped batch (`org` '' for policy reloads), as JSON, with
//!   the batch's last id in the sidecar's log and the records' time range: one row per batch
//!   and organization instead of one per record keeps shipping cheap.
//!
//! Key columns use the "C" collation: exact, byte-wise comparison, like the SQLite store.

use tokio_postgres::Client;

use super::UpstreamError;

/// Migrations, applied in order; `policyd_schema.version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE policyd_revision (
    one         boolean PRIMARY KEY DEFAULT true CHECK (one),
    upstream_id text    NOT NULL DEFAULT gen_random_uuid()::text,
    rev         bigint  NOT NULL DEFAULT 0,
    oldest      bigint  NOT NULL DEFAULT 1
);
INSERT INTO policyd_revision DEFAULT VALUES;

CREATE TABLE policyd_entities (
    etype text COLLATE "C" NOT NULL,
    eid   text COLLATE "C" NOT NULL,
    body  text   NOT NULL,
    size  bigint,
    quota bigint,
    rev   bigint NOT NULL,
    PRIMARY KEY (etype, eid)
);

CREATE TABLE policyd_parents (
    ctype text COLLATE "C" NOT NULL,
    cid   text COLLATE "C" NOT NULL,
    ptype text COLLATE "C" NOT NULL,
    pid   text COLLATE "C" NOT NULL,
    PRIMARY KEY (ctype, cid, ptype, pid)
);
CREATE INDEX policyd_parents_by_parent ON policyd_parents (ptype, pid);

CREATE TABLE policyd_changes (
    rev   bigint  NOT NULL,
    seq   integer NOT NULL,
    etype text COLLATE "C" NOT NULL,
    eid   text COLLATE "C" NOT NULL,
    body  text,
    PRIMARY KEY (rev, seq)
);

CREATE TABLE policyd_reservations (
    id         text PRIMARY KEY DEFAULT md5(random()::text || clock_timestamp()::text),
    ptype      text COLLATE "C" NOT NULL,
    pid        text COLLATE "C" NOT NULL,
    otype      text COLLATE "C",
    oid        text COLLATE "C",
    bytes      bigint NOT NULL,
    expires_at bigint NOT NULL,
    idem_key   text UNIQUE
);
CREATE INDEX policyd_reservations_by_project ON policyd_reservations (ptype, pid, expires_at);
CREATE INDEX policyd_reservations_by_org ON policyd_reservations (otype, oid, expires_at);
CREATE INDEX policyd_reservations_by_expiry ON policyd_reservations (expires_at);
"#,
    r#"
CREATE TABLE policyd_activity (
    sidecar text COLLATE "C" NOT NULL,
    last_id bigint NOT NULL,
    org     text COLLATE "C" NOT NULL,
    newest  bigint NOT NULL,
    oldest  bigint NOT NULL,
    records text   NOT NULL,
    PRIMARY KEY (sidecar, last_id, org)
);
CREATE INDEX policyd_activity_by_org ON policyd_activity (org, newest);
CREATE INDEX policyd_activity_by_time ON policyd_activity (newest);
-- lz4 compresses a batch's JSON several times faster than PostgreSQL's default (pglz), where
-- the server was built with it.
DO $$ BEGIN
    ALTER TABLE policyd_activity ALTER COLUMN records SET COMPRESSION lz4;
EXCEPTION WHEN OTHERS THEN NULL;
END $$;
"#,
];

/// An arbitrary constant naming policyd's migration lock (`pg_advisory_xact_lock`).
const MIGRATION_LOCK: i64 = 0x0070_6f6c_6963_7964;

/// Creates or updates policyd's tables; returns `(from, to)` schema versions. Safe to run from
/// several sidecars at once: they take turns on an advisory lock.
pub async fn migrate(client: &mut Client) -> Result<(usize, usize), UpstreamError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS policyd_schema (version integer NOT NULL)")
        .await?;
    let row = tx
        .query_opt("SELECT version FROM policyd_schema", &[])
        .await?;
    let from = match row {
        Some(r) => usize::try_from(r.get::<_, i32>(0)).unwrap_or(0),
        None => {
            tx.execute("INSERT INTO policyd_schema VALUES (0)", &[])
                .await?;
            0
        }
    };
    if from > MIGRATIONS.len() {
        return Err(newer(from));
    }
    for sql in &MIGRATIONS[from..] {
        tx.batch_execute(sql).await?;
    }
    let to = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
    tx.execute("UPDATE policyd_schema SET version = $1", &[&to])
        .await?;
    tx.commit().await?;
    Ok((from, MIGRATIONS.len()))
}

/// Checks the tables are there and current, without changing anything.
pub async fn check(client: &Client) -> Result<(), UpstreamError> {
    let exists = client
        .query_one("SELECT to_regclass('policyd_schema') IS NOT NULL", &[])
        .await?
        .get::<_, bool>(0);
    let version = if exists {
        client
            .query_opt("SELECT version FROM policyd_schema", &[])
            .await?
            .map_or(0, |r| usize::try_from(r.get::<_, i32>(0)).unwrap_or(0))
    } else {
        0
    };
    match version.cmp(&MIGRATIONS.len()) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Greater => Err(newer(version)),
        std::cmp::Ordering::Less => Err(UpstreamError::Schema(format!(
            "policyd's tables are at version {version} of {}: run `policyd upstream migrate`",
            MIGRATIONS.len()
        ))),
    }
}

fn newer(version: usize) -> UpstreamError {
    UpstreamError::Schema(format!(
        "the upstream schema version {version} is newer than this policyd ({})",
        MIGRATIONS.len()
    ))
}
