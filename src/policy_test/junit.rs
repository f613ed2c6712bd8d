//! The results of `policyd test` as JUnit XML, the report format CI systems read: one
//! `testsuite` per test file, one `testcase` per case, a `failure` per failing case, and an
//! `error` for a file that could not be run.

use std::fmt::Write;
use std::time::Duration;

use super::{FileResult, Report};

/// Renders the report as a JUnit XML document.
pub fn render(report: &Report) -> String {
    let total: usize = report.files.iter().map(|f| cases(f).0).sum();
    let errors = report.file_errors().len();
    let time: Duration = report.files.iter().map(|f| f.elapsed).sum();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"policyd test\" tests=\"{}\" failures=\"{}\" errors=\"{errors}\" time=\"{}\">",
        total + errors,
        report.failed(),
        seconds(time)
    );
    for file in &report.files {
        suite(&mut out, file);
    }
    out.push_str("</testsuites>\n");
    out
}

/// (cases, failures) of one file; (0, 0) when it could not be run.
fn cases(file: &FileResult) -> (usize, usize) {
    match &file.cases {
        Ok(cases) => (
            cases.len(),
            cases.iter().filter(|c| c.failure.is_some()).count(),
        ),
        Err(_) => (0, 0),
    }
}

fn suite(out: &mut String, file: &FileResult) {
    let name = escape(&file.path.display().to_string());
    let (tests, failures) = cases(file);
    let errors = usize::from(file.cases.is_err());
    let _ = writeln!(
        out,
        "  <testsuite name=\"{name}\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"0\" time=\"{}\">",
        tests + errors,
        seconds(file.elapsed)
    );
    match &file.cases {
        Ok(cases) => {
            for case in cases {
                let _ = write!(
                    out,
                    "    <testcase name=\"{}\" classname=\"{name}\" time=\"{}\"",
                    escape(&case.name),
                    seconds(case.elapsed)
                );
                match &case.failure {
                    None => out.push_str("/>\n"),
                    Some(why) => {
                        let why = escape(why);
                        let _ = writeln!(
                            out,
                            ">\n      <failure message=\"{why}\" type=\"policy\">{why}</failure>\n    </testcase>"
                        );
                    }
                }
            }
        }
        Err(e) => {
            let why = escape(&e.to_string());
            let _ = writeln!(
                out,
                "    <testcase name=\"{name}\" classname=\"{name}\" time=\"0\">\n      <error message=\"{why}\" type=\"test file\">{why}</error>\n    </testcase>"
            );
        }
    }
    out.push_str("  </testsuite>\n");
}

fn seconds(d: Duration) -> String {
    format!("{:.6}", d.as_secs_f64())
}

/// Escapes text for an XML attribute value or element content. Markup characters become
/// entities; tab, newline and carriage return become character references (so attribute
/// values keep them); characters XML 1.0 cannot carry at all (other control characters,
/// U+FFFE, U+FFFF) are written as `\u{..}`.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::{CaseResult, TestFileError};
    use super::*;

    fn case(name: &str, failure: Option<&str>) -> CaseResult {
        CaseResult {
            name: name.to_owned(),
            failure: failure.map(str::to_owned),
            reasons: vec![],
            elapsed: Duration::from_micros(12),
        }
    }

    #[test]
    fn escaped_text_reads_back_exactly_from_attributes_and_content() {
        let nasty = "a & b < c > d \"q\" 'a' \t tab \n line \r cr ]]> <![CDATA[ x ]]> é 𝄞";
        let report = Report {
            files: vec![FileResult {
                path: PathBuf::from("t/<weird> & \"file\".json"),
                cases: Ok(vec![case(nasty, Some(nasty)), case("ok", None)]),
                elapsed: Duration::from_millis(3),
            }],
        };
        let xml = render(&report);
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let suite = doc
            .descendants()
            .find(|n| n.has_tag_name("testsuite"))
            .unwrap();
        assert_eq!(suite.attribute("name"), Some("t/<weird> & \"file\".json"));
        assert_eq!(suite.attribute("tests"), Some("2"));
        assert_eq!(suite.attribute("failures"), Some("1"));
        let failing = suite
            .children()
            .find(|n| n.has_tag_name("testcase"))
            .unwrap();
        assert_eq!(failing.attribute("name"), Some(nasty));
        let failure = failing
            .children()
            .find(|n| n.has_tag_name("failure"))
            .unwrap();
        assert_eq!(failure.attribute("message"), Some(nasty));
        assert_eq!(failure.text(), Some(nasty));
    }

    #[test]
    fn characters_xml_cannot_carry_are_spelt_out() {
        let text = "nul\u{0} bell\u{7} esc\u{1b} \u{FFFF}";
        let escaped = escape(text);
        assert_eq!(escaped, "nul\\u{0} bell\\u{7} esc\\u{1b} \\u{ffff}");
        let xml = format!("<a b=\"{escaped}\">{escaped}</a>");
        let doc = roxmltree::Document::parse(&xml).unwrap();
        assert_eq!(doc.root_element().attribute("b"), Some(escaped.as_str()));
    }

    #[test]
    fn a_file_that_cannot_run_is_an_error() {
        let report = Report {
            files: vec![FileResult {
                path: PathBuf::from("t.json"),
                cases: Err(TestFileError::NoFiles {
                    path: PathBuf::from("x"),
                }),
                elapsed: Duration::ZERO,
            }],
        };
        let doc_text = render(&report);
        let doc = roxmltree::Document::parse(&doc_text).unwrap();
        let root = doc.root_element();
        assert_eq!(root.attribute("errors"), Some("1"));
        assert_eq!(root.attribute("failures"), Some("0"));
        assert!(doc.descendants().any(|n| n.has_tag_name("error")));
    }
}
