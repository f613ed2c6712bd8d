//! `policyd check` reports exactly what Cedar reports for the same files: every parse error,
//! every strict validation error and warning (and the schema parser's), with Cedar's message
//! and help, located at the file, line and column of Cedar's source span.

mod common;

use std::str::FromStr;

use cedar_policy::{PolicyId, PolicySet, Schema, ValidationMode, Validator};
use common::{policy_dir, policyd_command};
use miette::Diagnostic;

const SCHEMA: &str = r#"
entity User { name: String, age: Long };
entity Doc { owner: User, title: String };
action read, write appliesTo { principal: User, resource: Doc };
"#;

/// 1-based line and column (in characters) of a byte offset, computed independently of
/// policyd's own helper.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// `file:line:column: message (help)`, as Cedar locates and words the diagnostic.
fn render(file: &str, text: &str, d: &dyn Diagnostic) -> String {
    let mut out = String::from(file);
    if let Some(label) = d.labels().and_then(|mut l| l.next()) {
        let (line, column) = position(text, label.offset());
        out.push_str(&format!(":{line}:{column}"));
    }
    out.push_str(&format!(": {d}"));
    if let Some(help) = d.help() {
        out.push_str(&format!(" ({help})"));
    }
    out
}

/// Each diagnostic of `d`: its related ones when it groups several (parse errors), else itself.
fn each(d: &dyn Diagnostic) -> Vec<&dyn Diagnostic> {
    let related: Vec<&dyn Diagnostic> = d.related().map(|r| r.collect()).unwrap_or_default();
    if related.is_empty() { vec![d] } else { related }
}

/// What Cedar reports for a directory's files: (errors, warnings), rendered. Every policy
/// carries an `@id`, which policyd uses as its id.
fn cedar_reports(schema: &str, files: &[(&str, &str)]) -> (Vec<String>, Vec<String>) {
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    let schema = match Schema::from_cedarschema_str(schema) {
        Ok((s, ws)) => {
            for w in ws {
                warnings.push(format!(
                    "warning: {}",
                    render("schema.cedarschema", schema, &w)
                ));
            }
            Some(s)
        }
        Err(e) => {
            for d in each(&e) {
                errors.push(render("schema.cedarschema", schema, d));
            }
            None
        }
    };
    let mut set = PolicySet::new();
    let mut file_of = std::collections::HashMap::new();
    for (file, text) in files {
        match PolicySet::from_str(text) {
            Ok(parsed) => {
                for p in parsed.policies() {
                    let id = p.annotation("id").expect("fixtures carry @id").to_owned();
                    set.add(p.new_id(PolicyId::new(&id))).unwrap();
                    file_of.insert(id, (*file, *text));
                }
            }
            Err(e) => {
                for d in each(&e) {
                    errors.push(render(file, text, d));
                }
            }
        }
    }
    if let (Some(schema), true) = (schema, errors.is_empty()) {
        let result = Validator::new(schema).validate(&set, ValidationMode::Strict);
        for e in result.validation_errors() {
            let (file, text) = file_of[&e.policy_id().to_string()];
            errors.push(render(file, text, e));
        }
        for w in result.validation_warnings() {
            let (file, text) = file_of[&w.policy_id().to_string()];
            warnings.push(format!("warning: {}", render(file, text, w)));
        }
    }
    errors.sort();
    warnings.sort();
    (errors, warnings)
}

/// What `policyd check` printed: (exit code, errors, warnings), lints skipped (no solver).
fn policyd_reports(schema: &str, files: &[(&str, &str)]) -> (i32, Vec<String>, Vec<String>) {
    let mut all = vec![("schema.cedarschema", schema)];
    all.extend_from_slice(files);
    let dir = policy_dir(&all);
    let out = policyd_command()
        .arg("check")
        .arg("--policies")
        .arg(dir.path())
        .env("CVC5", "/nonexistent/cvc5")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    for line in stdout.lines() {
        if line.starts_with("warning: ") {
            warnings.push(line.to_owned());
        } else if !(line.starts_with("ok: ") || line.starts_with("note: ") || line.is_empty()) {
            errors.push(line.to_owned());
        }
    }
    errors.sort();
    warnings.sort();
    (out.status.code().unwrap_or(-1), errors, warnings)
}

fn assert_parity(schema: &str, files: &[(&str, &str)], min_errors: usize, min_warnings: usize) {
    let (want_errors, want_warnings) = cedar_reports(schema, files);
    let (code, errors, warnings) = policyd_reports(schema, files);
    assert_eq!(errors, want_errors, "errors");
    assert_eq!(warnings, want_warnings, "warnings");
    assert_eq!(code, i32::from(!want_errors.is_empty()), "exit code");
    assert!(errors.len() >= min_errors, "{errors:?}");
    assert!(warnings.len() >= min_warnings, "{warnings:?}");
    // Every validator diagnostic is located (schema-level ones may not be).
    for line in errors.iter().chain(&warnings) {
        if line.contains(".cedar:") {
            let rest = line.split(".cedar:").nth(1).unwrap();
            let mut parts = rest.splitn(3, ':');
            assert!(parts.next().unwrap().parse::<usize>().is_ok(), "{line}");
            assert!(parts.next().unwrap().parse::<usize>().is_ok(), "{line}");
        }
    }
}

#[test]
fn validation_errors_and_warnings_match_cedar_across_files() {
    let a = "@id(\"a-ok\")\npermit (principal, action == Action::\"read\", resource)\nwhen { resource.owner == principal };\n\n@id(\"a-bad-attr\")\npermit (principal, action == Action::\"read\", resource)\nwhen { resource.colour == \"red\" };\n\n@id(\"a-mixed\")\npermit (principal, action, resource) when { principal.name == \"p\u{0430}ypal\" };\n";
    // `Usr` is nearest to one entity type only: Cedar's "did you mean" picks among ties in no fixed
    // order, which would make the comparison flaky, not wrong.
    let b = "\n@id(\"b-type\")\npermit (principal, action == Action::\"write\", resource)\n  when { principal.age == \"old\" };\n@id(\"b-impossible\") forbid (principal, action == Action::\"read\", resource) when { false };\n@id(\"b-unknown-type\") permit (principal is Usr, action, resource);\n    @id(\"b-action\") permit (principal, action == Action::\"fly\", resource);\n";
    assert_parity(SCHEMA, &[("a.cedar", a), ("b.cedar", b)], 4, 2);
}

#[test]
fn warnings_alone_keep_the_set_valid() {
    let a = "@id(\"never\") permit (principal, action == Action::\"read\", resource) when { false };\n@id(\"ok\") permit (principal, action == Action::\"write\", resource) when { resource.title like \"*\" };\n";
    assert_parity(SCHEMA, &[("a.cedar", a)], 0, 1);
}

#[test]
fn parse_errors_match_cedar() {
    let a = "@id(\"x\")\npermit (principal, action, resource)\nwhen { 1 + };\n";
    let b = "@id(\"y\") permit (principal, action, resource) when { principal.name == \"a\" } unless;\n";
    assert_parity(SCHEMA, &[("a.cedar", a), ("b.cedar", b)], 2, 0);
}

#[test]
fn schema_errors_match_cedar() {
    let schema =
        "entity User { boss: Usr };\naction read appliesTo { principal: User, resource: User };\n";
    let a = "@id(\"x\") permit (principal, action, resource);\n";
    assert_parity(schema, &[("a.cedar", a)], 1, 0);
    let syntax = "entity User {\n  boss: User,,\n};\n";
    assert_parity(syntax, &[("a.cedar", a)], 1, 0);
}
