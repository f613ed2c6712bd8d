//! Plain-text rendering of analysis results for the terminal (`policyd diff`, `policyd check`).

use std::fmt::Write;

use super::{Change, Counterexample, DiffReport, Lint, Status};

/// The report as a person reads it: one block per changed environment, each with its
/// counterexample, then the equivalent ones on one line.
pub fn diff_text(report: &DiffReport) -> String {
    let mut out = String::new();
    if report.status == Status::Unavailable {
        let _ = writeln!(
            out,
            "analysis unavailable: {}",
            report.reason.as_deref().unwrap_or("unknown reason")
        );
        return out;
    }
    let s = &report.summary;
    let _ = writeln!(
        out,
        "{} environments in {} ms: {} equivalent, {} wider, {} narrower, {} different, {} added, {} removed, {} not comparable",
        s.environments,
        report.elapsed_ms,
        s.equivalent,
        s.wider,
        s.narrower,
        s.different,
        s.added,
        s.removed,
        s.not_comparable
    );
    for env in report
        .environments
        .iter()
        .filter(|e| e.change != Change::Equivalent)
    {
        let verdict = match env.change {
            Change::Wider => "WIDER",
            Change::Narrower => "narrower",
            Change::Different => "DIFFERENT",
            Change::Added => "added by the schema",
            Change::Removed => "removed by the schema",
            Change::NotComparable => "not comparable",
            Change::Equivalent => "equivalent",
        };
        let _ = writeln!(out, "\n{verdict}: {}", env.label());
        if let Some(note) = &env.note {
            let _ = writeln!(out, "  note: {note}");
        }
        if let Some(cex) = &env.widening {
            counterexample(&mut out, "now allowed", cex);
        }
        if let Some(cex) = &env.narrowing {
            counterexample(&mut out, "no longer allowed", cex);
        }
    }
    let same: Vec<String> = report
        .environments
        .iter()
        .filter(|e| e.change == Change::Equivalent)
        .map(|e| e.label())
        .collect();
    if !same.is_empty() {
        let _ = writeln!(out, "\nequivalent: {}", same.join("; "));
    }
    out
}

fn counterexample(out: &mut String, what: &str, cex: &Counterexample) {
    let _ = writeln!(out, "  {what}: {}", cex.summary());
    let _ = writeln!(out, "    request:  {}", cex.request);
    let _ = writeln!(out, "    entities: {}", cex.entities);
}

/// One warning per line: `file:line: warning: message`.
pub fn lint_text(lints: &[Lint]) -> String {
    lints.iter().map(|l| format!("warning: {l}\n")).collect()
}
