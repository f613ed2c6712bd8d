//! Which organization an entity belongs to, read from its resolved ancestors: what the
//! activity log files each entity write and delete under.

use cedar_policy::EntityUid;

use super::{Store, StoreError};

impl Store {
    /// Id of the organization `uid` is or belongs to (through its stored ancestors); the
    /// smallest when there are several. `org_type` is the organization entity type.
    pub fn organization_of(
        &self,
        uid: &EntityUid,
        org_type: &str,
    ) -> Result<Option<String>, StoreError> {
        if uid.type_name().to_string() == org_type {
            return Ok(Some(uid.id().unescaped().to_owned()));
        }
        let Some(found) = self.fetch(uid)? else {
            return Ok(None);
        };
        let ancestors = found
            .ancestors()
            .map(|a| (a.entity_type().to_string(), a.eid().as_ref()));
        Ok(smallest_of_type(ancestors, org_type))
    }

    /// [`Store::organization_of`] for an entity with these direct `parents`, without reading
    /// the entity itself: its ancestors are its parents and theirs, as in its closure.
    pub fn organization_under(
        &self,
        uid: &EntityUid,
        parents: &[EntityUid],
        org_type: &str,
    ) -> Result<Option<String>, StoreError> {
        if uid.type_name().to_string() == org_type {
            return Ok(Some(uid.id().unescaped().to_owned()));
        }
        let stored = parents
            .iter()
            .map(|p| self.fetch(p))
            .collect::<Result<Vec<_>, _>>()?;
        let own = parents
            .iter()
            .map(|p| (p.type_name().to_string(), p.id().unescaped()));
        let inherited = stored.iter().flatten().flat_map(|r| {
            r.ancestors()
                .map(|a| (a.entity_type().to_string(), a.eid().as_ref()))
        });
        Ok(smallest_of_type(own.chain(inherited), org_type))
    }
}

/// The smallest id among the `(type, id)` pairs of type `ty`.
fn smallest_of_type<'a>(uids: impl Iterator<Item = (String, &'a str)>, ty: &str) -> Option<String> {
    uids.filter(|(t, _)| t == ty)
        .map(|(_, id)| id)
        .min()
        .map(str::to_owned)
}
