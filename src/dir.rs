//! Listing the files policyd reads from a directory: the policy directory, and the directories
//! given to `policyd fmt` and `policyd test`.

use std::path::{Path, PathBuf};

/// The paths of `dir`'s top-level entries whose extension is one of `extensions`, sorted.
/// Hidden names (starting with `.`) are skipped: they include Kubernetes' `..data`
/// bookkeeping links and editors' swap files.
pub fn files_with_extension(dir: &Path, extensions: &[&str]) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let hidden = name.to_string_lossy().starts_with('.');
        let wanted = Path::new(&name)
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| extensions.contains(&e));
        if wanted && !hidden {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_visible_files_with_the_extensions_sorted() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "b.cedar",
            "a.cedarschema",
            ".hidden.cedar",
            "c.txt",
            "a.cedar",
        ] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let names: Vec<String> = files_with_extension(dir.path(), &["cedar", "cedarschema"])
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.cedar", "a.cedarschema", "b.cedar"]);
        assert!(files_with_extension(&dir.path().join("missing"), &["cedar"]).is_err());
    }
}
