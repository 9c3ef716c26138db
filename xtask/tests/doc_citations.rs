//! Every section the sources cite in `docs/algorithm.md` exists there.
//!
//! Comments, READMEs, recipes and docs cite the algorithm document as `docs/algorithm.md §N`
//! (or `§N.M`); the document gives each section an anchor line `<a id="sN"></a>`. This test
//! walks the repository's text files and fails on a citation without an anchor, and on any
//! citation of the old specification (`spec §`), which is not part of the repository.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Section numbers with an anchor line `<a id="sN"></a>` in the algorithm document.
fn anchors(doc: &str) -> BTreeSet<String> {
    doc.lines()
        .filter_map(|l| l.trim().strip_prefix("<a id=\"s"))
        .filter_map(|rest| rest.strip_suffix("\"></a>"))
        .map(str::to_string)
        .collect()
}

/// The section numbers `§N` / `§N.M` in a line (a trailing full stop is punctuation).
fn cited_sections(line: &str) -> Vec<String> {
    line.split('§')
        .skip(1)
        .filter_map(|after| {
            let number: String = after
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let number = number.trim_end_matches('.');
            (!number.is_empty()).then(|| number.to_string())
        })
        .collect()
}

fn text_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if path.is_dir() {
            text_files(&path, out);
        } else if ["rs", "md", "toml", "sh", "py"]
            .iter()
            .any(|ext| path.extension().is_some_and(|e| e == *ext))
        {
            out.push(path);
        }
    }
}

#[test]
fn every_cited_section_has_an_anchor() {
    let root = repo_root();
    let doc_path = root.join("docs/algorithm.md");
    let doc = fs::read_to_string(&doc_path).expect("docs/algorithm.md is in the repository");
    let known = anchors(&doc);
    assert!(
        known.len() >= 9,
        "expected the nine numbered sections, found anchors {known:?}"
    );

    let mut files = vec![root.join("README.md")];
    for dir in [
        "crates", "xtask", "docs", "recipes", "scripts", "models", "fixtures",
    ] {
        text_files(&root.join(dir), &mut files);
    }
    let mut problems = Vec::new();
    let mut citations = 0;
    for file in &files {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        let is_doc = file.ends_with("docs/algorithm.md");
        for (n, line) in text.lines().enumerate() {
            let place = format!("{}:{}", file.display(), n + 1);
            if line.contains("spec §") && !file.ends_with("doc_citations.rs") {
                problems.push(format!("{place}: cites the old specification: {line}"));
            }
            if !(is_doc || line.contains("algorithm.md")) {
                continue;
            }
            for section in cited_sections(line) {
                citations += 1;
                if !known.contains(&section) {
                    problems.push(format!(
                        "{place}: §{section} has no anchor in docs/algorithm.md"
                    ));
                }
            }
        }
    }
    assert!(
        citations > 100,
        "only {citations} citations found: is the walk broken?"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn section_parsing() {
    assert_eq!(
        cited_sections("see docs/algorithm.md §3.2, §4."),
        ["3.2", "4"]
    );
    assert_eq!(cited_sections("no citation"), Vec::<String>::new());
    let doc = "<a id=\"s1\"></a>\n## 1. Model\n<a id=\"s1.2\"></a>\n";
    assert_eq!(
        anchors(doc),
        BTreeSet::from(["1".to_string(), "1.2".to_string()])
    );
}
