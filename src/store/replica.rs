//! What a replica store is told to apply: the changes of a range of upstream revisions (or a
//! whole snapshot), and the position it reaches with them.
//!
//! In fleet mode (see [`crate::upstream`]) the local store is a copy of the upstream's entities.
//! A backend applies one [`Replicated`] batch in one transaction together with its
//! [`Position`], so a crash never leaves changes applied at a position that does not say so.

use cedar_policy::EntityUid;

use super::codec::Record;

/// Where a replica stands: which upstream it copies, and the last revision it applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The upstream's id (from its revision row).
    pub upstream: String,
    /// The last upstream revision applied.
    pub revision: i64,
}

/// The net effect of a range of upstream revisions, or a whole snapshot.
#[derive(Debug, Clone)]
pub struct Replicated {
    /// The position the replica reaches once this is applied.
    pub position: Position,
    /// `true`: a snapshot. Every stored entity not in `upserts` is removed.
    pub reset: bool,
    /// Entities as they are at `position`.
    pub upserts: Vec<Record>,
    /// Entities removed by `position` (not in `upserts`).
    pub deletes: Vec<EntityUid>,
}
