//! `policyd fmt`: the bundled policies are formatted; formatting keeps every policy (ids,
//! effects, scopes, conditions) and every comment; `--check` changes nothing and exits 1
//! naming the files that would change; unparsable files exit 2 with their line.

mod common;

use std::path::Path;
use std::process::Output;

use common::{policies_copy, repo_policies};

fn fmt(args: &[&str]) -> Output {
    common::policyd_command()
        .arg("fmt")
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The same policies laid out badly: every line indented and followed by spaces, blank lines
/// doubled, scopes squeezed. Only white space outside comments and strings changes.
fn messy(text: &str) -> String {
    text.lines()
        .map(|l| {
            let l = if l.trim_start().starts_with("//") {
                l.to_owned()
            } else {
                l.replace("(principal, ", "(  principal ,")
                    .replace(" == ", "==")
            };
            format!("   {l}   \n\n")
        })
        .collect()
}

fn cedar_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cedar"))
        .collect();
    names.sort();
    names
}

#[test]
fn the_bundled_policies_are_formatted() {
    let policies = repo_policies();
    let out = fmt(&["--check", "--policies", policies.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).ends_with(" files checked, 0 would be reformatted\n"));
}

/// Reformatting a badly laid out copy of every bundled file gives back the bundled text, and
/// the reformatted set loads to the same policies under the same ids, comments kept.
#[test]
fn formatting_keeps_every_policy_id_and_comment() {
    let dir = policies_copy();
    let names = cedar_files(dir.path());
    assert!(names.len() >= 6, "{names:?}");
    for name in &names {
        let path = dir.path().join(name);
        std::fs::write(&path, messy(&std::fs::read_to_string(&path).unwrap())).unwrap();
    }
    let out = fmt(&["--policies", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for name in &names {
        let bundled = std::fs::read_to_string(repo_policies().join(name)).unwrap();
        let formatted = std::fs::read_to_string(dir.path().join(name)).unwrap();
        for comment in bundled.lines().filter(|l| l.trim_start().starts_with("//")) {
            assert!(formatted.contains(comment), "{name} lost `{comment}`");
        }
        assert_eq!(formatted, bundled, "{name}");
    }
    let original = policyd::policy::load_dir(&repo_policies()).unwrap();
    let reformatted = policyd::policy::load_dir(dir.path()).unwrap();
    assert!(original.policies == reformatted.policies);
    let shape = |s: &policyd::policy::PolicySnapshot| -> Vec<(String, String, String)> {
        s.infos
            .iter()
            .map(|i| (i.id.clone(), format!("{:?}", i.effect), i.file.clone()))
            .collect()
    };
    assert_eq!(shape(&original), shape(&reformatted));
    for policy in original.policies.policies() {
        let again = reformatted.policies.policy(policy.id()).unwrap();
        assert_eq!(policy.annotation("id"), again.annotation("id"));
        assert_eq!(
            policy.to_json().unwrap(),
            again.to_json().unwrap(),
            "{}",
            policy.id()
        );
    }
}

#[test]
fn check_names_what_would_change_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tidy = "@id(\"a\")\npermit (principal, action, resource);\n";
    let untidy = "// note\n@id(\"b\")   permit(principal,action,resource)when{ true } ;\n";
    std::fs::write(dir.path().join("a.cedar"), tidy).unwrap();
    std::fs::write(dir.path().join("b.cedar"), untidy).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not policy").unwrap();
    let d = dir.path().to_str().unwrap();

    let out = fmt(&["--check", d]);
    assert_eq!(out.status.code(), Some(1));
    let b = dir.path().join("b.cedar");
    assert_eq!(
        text(&out.stdout),
        format!(
            "would reformat {}\n2 files checked, 1 would be reformatted\n",
            b.display()
        )
    );
    assert_eq!(std::fs::read_to_string(&b).unwrap(), untidy);

    let out = fmt(&[d]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        format!(
            "reformatted {}\n2 files checked, 1 reformatted\n",
            b.display()
        )
    );
    let formatted = std::fs::read_to_string(&b).unwrap();
    assert!(
        formatted.starts_with("// note\n@id(\"b\")\n"),
        "{formatted}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("a.cedar")).unwrap(),
        tidy
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    let out = fmt(&["--check", d]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

#[cfg(unix)]
#[test]
fn a_symlinked_file_is_rewritten_through_its_link() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("real.cedar");
    std::fs::write(&target, "permit(principal,action,resource);").unwrap();
    let link = dir.path().join("link.cedar");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = fmt(&[link.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "permit (principal, action, resource);\n"
    );
}

#[test]
fn unparsable_files_exit_2_with_their_line_and_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.cedar");
    let text_before = "permit(principal, action, resource);\n\npermit(principal, action, resource) when { 1 + };\n";
    std::fs::write(&bad, text_before).unwrap();
    let out = fmt(&[bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("error: {}:3:", bad.display())),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&bad).unwrap(), text_before);

    let out = fmt(&[
        "--check",
        dir.path().join("missing.cedar").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot read"),
        "{}",
        text(&out.stderr)
    );

    let empty = tempfile::tempdir().unwrap();
    let out = fmt(&[empty.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no *.cedar files in"));
}
