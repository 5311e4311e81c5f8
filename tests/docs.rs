//! What docs/ says must be what the code is: the sizes of the counters file as the code asserts them, a
//! module map that names every module, and relative links that lead somewhere.

use std::path::{Path, PathBuf};

const DESIGN: &str = include_str!("../docs/design.md");
const COUNTERS_FILE: &str = include_str!("../docs/counters-file.md");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The number a compile-time assert in `source` ties to `left` (`const _: () = assert!(LEFT == N);`), or a
/// constant's value (`LEFT: u64 = N;`).
fn asserted(source: &str, left: &str) -> u64 {
    let at = source.find(left).unwrap_or_else(|| panic!("the source no longer has `{left}`"));
    let rest = &source[at + left.len()..];
    let value =
        rest[rest.find('=').unwrap_or_else(|| panic!("no `=` after `{left}`"))..].trim_start_matches(['=', ' ']);
    let digits: String = value.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().unwrap_or_else(|_| panic!("no number after `{left}`"))
}

/// Every number written as `N-byte PHRASE` (or `N bytes` before it, with `PHRASE, N bytes`) in `text`.
fn sizes_named(text: &str, phrase: &str) -> Vec<u64> {
    let text = text.replace('\n', " ").split_whitespace().collect::<Vec<_>>().join(" ");
    let mut found = Vec::new();
    for (at, _) in text.match_indices(&format!("-byte {phrase}")) {
        let digits: String = text[..at].chars().rev().take_while(|c| c.is_ascii_digit()).collect();
        found.push(digits.chars().rev().collect::<String>().parse().expect("a number before -byte"));
    }
    for (at, _) in text.match_indices(&format!("{phrase}, ")) {
        let rest = &text[at + phrase.len() + 2..];
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if !digits.is_empty() && rest[digits.len()..].starts_with(" bytes") {
            found.push(digits.parse().unwrap());
        }
    }
    found
}

#[test]
fn the_designs_sizes_are_the_ones_the_code_asserts() {
    let cell_rs = include_str!("../src/counters/cell.rs");
    let index_rs = include_str!("../src/counters/index.rs");
    let layout_rs = include_str!("../src/counters/layout.rs");
    let cell = asserted(cell_rs, "size_of::<Cell>()");
    let record = asserted(index_rs, "size_of::<Record>()");
    let block = asserted(layout_rs, "assert!(BLOCK_LEN");
    let header = asserted(layout_rs, "const HEADER_LEN");
    assert!(block >= cell + record, "a block holds a cell and a record");

    for (doc, text, phrase, size) in [
        ("docs/design.md", DESIGN, "counter cell", cell),
        ("docs/design.md", DESIGN, "policy records", record),
        ("docs/design.md", DESIGN, "block", block),
        ("src/counters/cell.rs", cell_rs, "The counter cell of a key", cell),
        ("src/counters/index.rs", index_rs, "policy records", record),
    ] {
        let named = sizes_named(text, phrase);
        assert!(!named.is_empty(), "{doc} no longer gives the size of the {phrase}");
        assert!(named.iter().all(|&n| n == size), "{doc} says the {phrase} takes {named:?} bytes; the code: {size}");
    }
    let header_kib = format!("(first {} KiB)", header / 1024);
    assert!(COUNTERS_FILE.contains(&header_kib), "docs/counters-file.md must say the header is {header_kib}");
}

/// `src/X` in backticks, as the module map names files and folders.
fn src_paths_named(text: &str) -> Vec<&str> {
    text.match_indices("`src/").map(|(at, _)| &text[at + 1..][..text[at + 1..].find('`').unwrap()]).collect()
}

fn entries(dir: &Path) -> Vec<(String, bool)> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().into_string().unwrap(), e.file_type().unwrap().is_dir())
        })
        .collect();
    names.sort();
    names
}

#[test]
fn the_module_map_names_every_module_and_nothing_that_is_gone() {
    for path in src_paths_named(DESIGN) {
        assert!(repo().join(path).exists(), "docs/design.md names {path}, which does not exist");
    }
    let src = repo().join("src");
    let mut folders = vec![];
    for (name, is_dir) in entries(&src) {
        assert!(DESIGN.contains(&format!("`src/{name}")), "docs/design.md's map does not name src/{name}");
        if is_dir {
            folders.push(src.join(&name));
        }
    }
    folders.push(src.join("bin/ms-auth"));
    for folder in folders {
        for (name, is_dir) in entries(&folder) {
            // Named alone (`keys.rs`) or within a path (`src/bin/ms-auth/`).
            let named = if is_dir { format!("{name}/`") } else { format!("{name}`") };
            assert!(
                DESIGN.contains(&format!("`{named}")) || DESIGN.contains(&format!("/{named}")),
                "docs/design.md's map does not name {}/{name}",
                folder.strip_prefix(repo()).unwrap().display()
            );
        }
    }
}

/// A heading's anchor as GitHub makes it: lower case, spaces to `-`, other punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(markdown: &str) -> Vec<String> {
    markdown.lines().filter_map(|l| l.strip_prefix('#')).map(|h| anchor(h.trim_start_matches('#'))).collect()
}

/// The targets of the inline links and images of a Markdown text.
fn link_targets(markdown: &str) -> Vec<&str> {
    markdown
        .match_indices("](")
        .filter_map(|(at, _)| {
            let rest = &markdown[at + 2..];
            rest.find(')').map(|end| &rest[..end])
        })
        .collect()
}

#[test]
fn every_relative_link_of_the_readme_and_docs_leads_somewhere() {
    let mut documents = vec![repo().join("README.md")];
    for (name, is_dir) in entries(&repo().join("docs")) {
        if !is_dir && name.ends_with(".md") {
            documents.push(repo().join("docs").join(name));
        }
    }
    let mut checked = 0;
    for document in &documents {
        let text = read(document);
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, fragment) = target.split_once('#').unwrap_or((target, ""));
            let path: PathBuf = if file.is_empty() { document.clone() } else { document.parent().unwrap().join(file) };
            assert!(path.exists(), "{}: the link to {target} leads nowhere", document.display());
            if !fragment.is_empty() {
                assert!(
                    anchors(&read(&path)).iter().any(|a| a == fragment),
                    "{}: {} has no heading #{fragment}",
                    document.display(),
                    path.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} relative links found: is the link parser still right?");
}

#[test]
fn the_readme_links_every_document_in_docs() {
    let readme = read(&repo().join("README.md"));
    for (name, _) in entries(&repo().join("docs")) {
        assert!(readme.contains(&format!("](docs/{name})")), "README.md does not link docs/{name}");
    }
    assert!(readme.contains("](CHANGELOG.md)"), "README.md must link CHANGELOG.md");
}
