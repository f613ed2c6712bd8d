//! Storage accounting and quotas: what a project or organization uses, what reservations hold,
//! and whether more fits.
//!
//! Any entity with a `size_bytes: Long` attribute counts toward each of its ancestors of an
//! accounted type (`Project`, `Organization`). The store keeps the totals up to date in the
//! transaction of every write; this module holds the types and the pure quota arithmetic.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use cedar_policy::EntityUid;

/// Ancestor types that storage is accounted to.
pub const ACCOUNT_TYPES: &[&str] = &["Project", "Organization"];
/// The attribute holding an item's size.
pub const SIZE_ATTR: &str = "size_bytes";
/// The optional attribute holding a project's or organization's quota.
pub const QUOTA_ATTR: &str = "quota_bytes";
/// The type reservations are made against.
pub const PROJECT_TYPE: &str = "Project";
/// The type whose quota also bounds its projects.
pub const ORGANIZATION_TYPE: &str = "Organization";

/// Items and bytes of one entity type under an ancestor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TypeUsage {
    /// Number of items.
    pub count: i64,
    /// Their total size.
    pub bytes: i64,
}

/// Storage of one project or organization.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// `quota_bytes`, when set.
    pub quota: Option<i64>,
    /// Bytes held by unexpired reservations.
    pub reserved: i64,
    /// Items and bytes per item type.
    pub by_type: BTreeMap<String, TypeUsage>,
}

impl Usage {
    /// Total bytes of all items.
    pub fn used(&self) -> i64 {
        self.by_type.values().map(|t| t.bytes).sum()
    }
}

/// One side of a quota check: a project or its organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Side {
    /// The project or organization.
    pub entity: EntityUid,
    /// Bytes of stored items.
    pub used: i64,
    /// Bytes held by unexpired reservations.
    pub reserved: i64,
    /// The quota, `None` for unlimited.
    pub quota: Option<i64>,
}

impl Side {
    fn fits(&self, add: i64) -> bool {
        self.quota
            .is_none_or(|q| self.used.saturating_add(self.reserved).saturating_add(add) <= q)
    }
}

/// Whether adding bytes to a project keeps it and its organization within quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaCheck {
    /// Whether both stay within quota.
    pub allowed: bool,
    /// The project's side.
    pub project: Side,
    /// The organization's side, when the project has one.
    pub organization: Option<Side>,
    /// Why, naming the entity that would go over.
    pub reason: String,
}

/// Decides a quota check. Pure.
pub fn check(project: Side, organization: Option<Side>, add: i64) -> QuotaCheck {
    let over = |s: &Side| {
        format!(
            "{} would exceed its quota: {} used + {} reserved + {add} requested > {} bytes",
            s.entity,
            s.used,
            s.reserved,
            s.quota.unwrap_or_default()
        )
    };
    let reason = if !project.fits(add) {
        Some(over(&project))
    } else {
        organization.as_ref().filter(|o| !o.fits(add)).map(over)
    };
    QuotaCheck {
        allowed: reason.is_none(),
        reason: reason.unwrap_or_else(|| "within quota".to_owned()),
        project,
        organization,
    }
}

/// Bytes held for an upload in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Opaque id.
    pub id: String,
    /// The project it counts against (and through it, its organization).
    pub project: EntityUid,
    /// Bytes held.
    pub bytes: i64,
    /// Expiry, in microseconds since the Unix epoch.
    pub expires_at: i64,
    /// The caller's idempotency key, if any.
    pub idempotency_key: Option<String>,
}

impl Reservation {
    /// The answer when a reservation of `bytes` on `project` is asked again at `now` under this
    /// one's idempotency key: this one again when it was asked the same, a key conflict when
    /// not; `None` once it has expired, when its key no longer holds it.
    pub fn asked_again(&self, project: &EntityUid, bytes: i64, now: i64) -> Option<ReserveOutcome> {
        if self.expires_at <= now {
            return None;
        }
        Some(if self.project == *project && self.bytes == bytes {
            ReserveOutcome::Existing(self.clone())
        } else {
            ReserveOutcome::KeyConflict(self.clone())
        })
    }
}

/// The outcome of a reservation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    /// A new reservation.
    Created(Reservation),
    /// A retry: the reservation made earlier with the same idempotency key.
    Existing(Reservation),
    /// It would exceed a quota.
    Refused(QuotaCheck),
    /// No such project is stored.
    UnknownProject,
    /// The idempotency key belongs to a reservation with other parameters.
    KeyConflict(Reservation),
}

/// Now, in microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Microseconds since the epoch as RFC 3339 UTC.
pub fn format_micros(micros: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_micros(u64::try_from(micros).unwrap_or(0));
    humantime::format_rfc3339_micros(t).to_string()
}

/// Bytes in binary units for people: `1.5 GiB`.
pub fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(id: &str, used: i64, reserved: i64, quota: Option<i64>) -> Side {
        Side {
            entity: format!("Project::\"{id}\"").parse().unwrap(),
            used,
            reserved,
            quota,
        }
    }

    #[test]
    fn checks_name_the_side_that_goes_over() {
        assert!(check(side("p", 10, 0, None), None, i64::MAX).allowed);
        assert!(check(side("p", 10, 5, Some(20)), None, 5).allowed);
        let c = check(side("p", 10, 5, Some(20)), None, 6);
        assert!(!c.allowed);
        assert!(c.reason.contains("Project::\"p\""), "{}", c.reason);
        let c = check(side("p", 0, 0, None), Some(side("o", 90, 0, Some(100))), 11);
        assert!(!c.allowed);
        assert!(c.reason.contains("Project::\"o\""), "{}", c.reason);
    }

    #[test]
    fn human_bytes_uses_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }

    #[test]
    fn a_reservation_asked_again_is_itself_a_conflict_or_expired() {
        let project: EntityUid = "Project::\"p\"".parse().unwrap();
        let other: EntityUid = "Project::\"q\"".parse().unwrap();
        let held = Reservation {
            id: "r".to_owned(),
            project: project.clone(),
            bytes: 10,
            expires_at: 100,
            idempotency_key: Some("k".to_owned()),
        };
        assert_eq!(
            held.asked_again(&project, 10, 99),
            Some(ReserveOutcome::Existing(held.clone()))
        );
        assert_eq!(
            held.asked_again(&project, 11, 99),
            Some(ReserveOutcome::KeyConflict(held.clone()))
        );
        assert_eq!(
            held.asked_again(&other, 10, 99),
            Some(ReserveOutcome::KeyConflict(held.clone()))
        );
        assert_eq!(held.asked_again(&project, 10, 100), None);
    }
}
