//! The compact forms of written entities, for the cache's second tier (see [`super::compact`]):
//! a write puts its entities' new forms in as it replaces them (write-through).
//!
//! A form is made from the record's stored JSON, which takes about a fifth as long as the
//! backend write (a profile of loading 100k entities). The backend write is serial (one writer
//! at a time) and, while a service sends its writes one after the other, the other cores wait
//! for it; so a large write computes its forms on a thread of its own while the backend
//! writes, and they add nothing to how long the write takes.

use super::cache::{Form, Forms};
use super::{Record, Store};

/// From this many entities on, a write computes their compact forms on a thread of its own;
/// for fewer, starting the thread would cost more than it saves.
const ALONGSIDE: usize = 64;

impl Store {
    /// The compact forms of `records`: computing on a thread of `scope` for a large write
    /// (see [`Store::upsert`]), else at hand.
    pub(super) fn forms_alongside<'scope>(
        &'scope self,
        scope: &'scope std::thread::Scope<'scope, '_>,
        records: &'scope [Record],
    ) -> Forms<'scope> {
        if records.len() < ALONGSIDE || self.cache.compact_budget() == 0 {
            return Forms::Ready(self.forms(records));
        }
        match std::thread::Builder::new()
            .name("policyd-forms".to_owned())
            .spawn_scoped(scope, || self.forms(records))
        {
            Ok(handle) => Forms::Computing(handle),
            Err(_) => Forms::Ready(self.forms(records)),
        }
    }

    /// The compact forms of `records`, for the cache's second tier (none when it is off,
    /// without parsing them).
    pub(super) fn forms(&self, records: &[Record]) -> Vec<Form> {
        if self.cache.compact_budget() == 0 {
            return Vec::new();
        }
        records
            .iter()
            .filter_map(|r| {
                let json = serde_json::from_str(&r.body).ok()?;
                self.cache.form(&json)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    fn records(n: usize) -> Vec<Record> {
        crate::synth::entities(crate::synth::Shape::about(1_000), 1)
            .take(n)
            .map(|item| {
                let entity = cedar_policy::Entity::from_json_value(item, None).unwrap();
                crate::store::codec::encode(&entity).unwrap()
            })
            .collect()
    }

    /// A large write's forms are computed beside the backend write, a small one's at once;
    /// both are every record's form.
    #[test]
    fn a_large_write_computes_its_forms_on_a_thread_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(
            Box::new(SqliteStore::open(&dir.path().join("s.db")).unwrap()),
            1 << 20,
            1 << 20,
        );
        for (n, alongside) in [(ALONGSIDE - 1, false), (ALONGSIDE, true)] {
            let records = records(n);
            let forms = std::thread::scope(|scope| {
                let forms = store.forms_alongside(scope, &records);
                assert_eq!(
                    matches!(forms, Forms::Computing(_)),
                    alongside,
                    "{n} records"
                );
                forms.get()
            });
            assert_eq!(forms.len(), n);
            assert_eq!(forms, store.forms(&records));
        }
    }
}
