//! Large writes: a streamed write (chunk after chunk in one transaction), and the tuning
//! `policyd import` gives its store.
//!
//! A streamed write upserts each chunk as a write of its own would, inside one transaction,
//! so a caller can validate the next chunk meanwhile. An import's store also gets a large
//! writer page cache, keeps temporary tables in memory, and commits through a rollback journal
//! instead of the WAL when it has the file to itself: the WAL takes every new page once and
//! copies it into the file again at the checkpoint, while a journal takes only the pages the
//! write overwrites.

use super::{NextChunk, SqliteStore, StoreError, WriteEffect, accounting, upsert_in};

impl SqliteStore {
    /// Tunes the store for `policyd import`, one large write: a writer page cache of about
    /// `cache_mib` MiB instead of SQLite's 2 MiB (its one transaction touches most pages of
    /// the file; a daemon keeps the default, which counts in its memory bound), temporary
    /// tables in memory, and streamed writes committed through a rollback journal when no
    /// other connection has the file open (the file is back in WAL mode afterwards).
    pub fn for_import(mut self, cache_mib: u32) -> Result<Self, StoreError> {
        let kib = u64::from(cache_mib) * 1024;
        let writer = self.writer.get_mut().unwrap_or_else(|p| p.into_inner());
        writer.execute_batch(&format!(
            "PRAGMA cache_size=-{kib}; PRAGMA temp_store=MEMORY;"
        ))?;
        // Changing where temporary tables live drops them: create them again.
        writer.execute_batch(accounting::TEMP_TABLES)?;
        self.importing = true;
        Ok(self)
    }

    /// Upserts every chunk `next` yields in one transaction (see
    /// [`crate::store::EntityStore::upsert_stream`]), each exactly as a write of its own:
    /// storage counters and the cycle check are brought up to date per chunk.
    pub(super) fn write_stream(&self, next: &mut NextChunk<'_>) -> Result<WriteEffect, StoreError> {
        let journaled = self.importing && self.journal_mode("DELETE")? == "delete";
        let written = self.write(|tx| {
            let mut effect = WriteEffect::default();
            while let Some(chunk) = next()? {
                effect.hierarchy_changed |= upsert_in(tx, &chunk)?.hierarchy_changed;
            }
            Ok(effect)
        });
        if journaled && self.journal_mode("WAL")? != "wal" {
            return Err(StoreError::Open {
                path: self.path.clone(),
                message: "cannot return to WAL mode after the import".to_owned(),
            });
        }
        written
    }

    /// Switches the file's journal to `mode`; the mode it is in afterwards (SQLite keeps WAL
    /// while another connection has the file open).
    fn journal_mode(&self, mode: &str) -> Result<String, StoreError> {
        let conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let now: String =
            conn.query_row(&format!("PRAGMA journal_mode={mode}"), [], |r| r.get(0))?;
        Ok(now.to_ascii_lowercase())
    }
}
