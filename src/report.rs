//! Plain-text tables for admins at a terminal.

use std::fmt::Write as _;

use cedar_policy::EntityUid;

use crate::activity::Record;
use crate::storage::{Usage, format_micros, human_bytes};

/// A table with a header row; columns are padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// `used of quota (pct)`, or `used (no quota)`.
fn of_quota(used: i64, quota: Option<i64>) -> String {
    match quota {
        Some(q) if q > 0 => format!(
            "{} of {} ({:.1}%)",
            human_bytes(used),
            human_bytes(q),
            used as f64 * 100.0 / q as f64
        ),
        Some(q) => format!("{} of {}", human_bytes(used), human_bytes(q)),
        None => format!("{} (no quota)", human_bytes(used)),
    }
}

/// Storage of an organization and each of its projects, largest first.
pub fn organization_storage(
    org: &EntityUid,
    usage: &Usage,
    projects: &mut [(EntityUid, Usage)],
) -> String {
    projects.sort_by(|(a, ua), (b, ub)| {
        ub.used()
            .cmp(&ua.used())
            .then_with(|| a.to_string().cmp(&b.to_string()))
    });
    let types: Vec<&String> = usage.by_type.keys().collect();
    let mut header = vec!["PROJECT", "USED", "RESERVED", "QUOTA", "% QUOTA"];
    header.extend(types.iter().map(|t| t.as_str()));
    let rows: Vec<Vec<String>> = projects
        .iter()
        .map(|(p, u)| {
            let mut row = vec![
                p.to_string(),
                human_bytes(u.used()),
                human_bytes(u.reserved),
                u.quota.map_or("-".to_owned(), human_bytes),
                u.quota.filter(|q| *q > 0).map_or("-".to_owned(), |q| {
                    format!("{:.1}%", u.used() as f64 * 100.0 / q as f64)
                }),
            ];
            row.extend(
                types
                    .iter()
                    .map(|t| u.by_type.get(*t).map_or(0, |x| x.count).to_string()),
            );
            row
        })
        .collect();
    format!(
        "{org}: {} used, {} reserved, {} projects\n\n{}",
        of_quota(usage.used(), usage.quota),
        human_bytes(usage.reserved),
        projects.len(),
        table(&header, &rows)
    )
}

/// Storage of one project, per item type.
pub fn project_storage(project: &EntityUid, usage: &Usage) -> String {
    let rows: Vec<Vec<String>> = usage
        .by_type
        .iter()
        .map(|(t, u)| vec![t.clone(), u.count.to_string(), human_bytes(u.bytes)])
        .collect();
    format!(
        "{project}: {} used, {} reserved\n\n{}",
        of_quota(usage.used(), usage.quota),
        human_bytes(usage.reserved),
        table(&["TYPE", "ITEMS", "BYTES"], &rows)
    )
}

/// An organization's activity trail, newest first.
pub fn activity(org: &str, records: &[Record]) -> String {
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            let e = r;
            let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
            vec![
                format_micros(r.time),
                e.kind.as_str().to_owned(),
                dash(&e.principal),
                dash(&e.action),
                dash(&e.resource),
                dash(&e.decision),
                e.reasons.join(", "),
            ]
        })
        .collect();
    format!(
        "Activity of Organization::{org:?}: {} records, newest first\n\n{}",
        records.len(),
        table(
            &[
                "TIME",
                "KIND",
                "PRINCIPAL",
                "ACTION",
                "RESOURCE",
                "DECISION",
                "REASONS"
            ],
            &rows
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let t = table(
            &["A", "LONG HEADER"],
            &[vec!["wide cell".into(), "x".into()]],
        );
        assert_eq!(t, "A          LONG HEADER\nwide cell  x\n");
    }
}
