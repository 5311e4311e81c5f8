//! The modules of src/ import only from lower layers: the layers are the numbered list in `src/lib.rs`'s
//! doc, and every `crate::<module>` path in a file of the library must name a module of a lower layer
//! (or the file's own module). Plain text matching: cheap, and enough for the paths this crate writes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// Module name → layer, read from the `//! N. `a`, `b`` lines of lib.rs.
fn layers() -> BTreeMap<String, usize> {
    let lib = std::fs::read_to_string(Path::new(SRC).join("lib.rs")).expect("src/lib.rs is readable");
    let mut layers = BTreeMap::new();
    for line in lib.lines() {
        let Some(rest) = line.strip_prefix("//! ") else { continue };
        let Some((number, names)) = rest.split_once(". ") else { continue };
        let Ok(layer) = number.parse::<usize>() else { continue };
        for name in names.split('`').skip(1).step_by(2) {
            layers.insert(name.to_string(), layer);
        }
    }
    layers
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a line names through `crate::`: `crate::a::b` and `crate::{a, b::c}`.
fn crate_paths(line: &str) -> Vec<String> {
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
    let mut found = Vec::new();
    for (i, _) in line.match_indices("crate::") {
        let preceded_by_ident = line[..i].chars().last().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if preceded_by_ident {
            continue; // `ms_auth_crate::`, not this crate
        }
        let rest = &line[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            found.extend(group.split(',').map(|part| ident(part.trim())).filter(|n| !n.is_empty()));
        } else {
            found.push(ident(rest));
        }
    }
    found
}

/// Every upward or sideways import in the library, as "file:line: module (layer) -> module (layer)".
fn violations() -> Vec<String> {
    let layers = layers();
    let mut files = Vec::new();
    rust_files(Path::new(SRC), &mut files);
    files.sort();
    let mut found = Vec::new();
    for file in files {
        let relative = file.strip_prefix(SRC).unwrap();
        let first = relative.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
        let module = first.strip_suffix(".rs").unwrap_or(&first).to_string();
        if module == "lib" || module == "bin" {
            continue; // the root declares every module; the binary sees the library as `ms_auth::`
        }
        let Some(&own) = layers.get(&module) else {
            found.push(format!("src/{}: module `{module}` has no layer in lib.rs's list", relative.display()));
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            // Comments may name any module: only code imports.
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for target in crate_paths(code) {
                if target == module {
                    continue;
                }
                match layers.get(&target) {
                    Some(&layer) if layer < own => {}
                    Some(&layer) => found.push(format!(
                        "src/{}:{}: `{module}` (layer {own}) uses `crate::{target}` (layer {layer})",
                        relative.display(),
                        n + 1
                    )),
                    // An item of the root (`crate::Error`, re-exported): a path through the root hides
                    // the layer, so it is refused too.
                    None => found.push(format!(
                        "src/{}:{}: `{module}` uses `crate::{target}`, which is no module of lib.rs's list: name its module",
                        relative.display(),
                        n + 1
                    )),
                }
            }
        }
    }
    found
}

#[test]
fn every_module_of_the_library_has_a_layer() {
    let layers = layers();
    for module in ["status", "error", "key", "period", "gcra", "policy", "spec", "counters", "store", "fleet", "ffi"] {
        assert!(layers.contains_key(module), "lib.rs's list of layers misses `{module}`: {layers:?}");
    }
}

#[test]
fn no_module_imports_from_its_own_layer_or_above() {
    let found = violations();
    assert!(found.is_empty(), "imports that do not point down (see the layers in src/lib.rs):\n{}", found.join("\n"));
}

#[test]
fn the_checker_sees_each_form_of_path() {
    assert_eq!(crate_paths("use crate::ffi;"), ["ffi"]);
    assert_eq!(crate_paths("    Ok = crate::ffi::MS_OK,"), ["ffi"]);
    assert_eq!(crate_paths("use crate::{error::Result, fleet::Change};"), ["error", "fleet"]);
    assert_eq!(crate_paths("let x = my_crate::fleet::Y;"), Vec::<String>::new());
}
