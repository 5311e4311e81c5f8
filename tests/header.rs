//! The committed header must be exactly what cbindgen generates from src/ffi.rs now.

#[test]
fn committed_header_is_fresh() {
    let generated = include_str!(concat!(env!("OUT_DIR"), "/ms_auth.h"));
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/include/ms_auth.h");
    if std::env::var_os("MS_AUTH_BLESS").is_some() {
        std::fs::write(path, generated).expect("include/ms_auth.h is writable");
        return;
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/ms_auth.h is stale: regenerate it with `MS_AUTH_BLESS=1 cargo test --test header` and commit it"
    );
}

/// The contract document and the header name the same functions: none added to one and not the other.
#[test]
fn the_contract_document_names_every_function_of_the_header() {
    let names = |text: &str| -> std::collections::BTreeSet<String> {
        let mut found = std::collections::BTreeSet::new();
        for (i, _) in text.match_indices("ms_") {
            let rest = &text[i..];
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            if rest[end..].starts_with('(') && text[..i].chars().last().is_none_or(|c| !c.is_ascii_alphanumeric()) {
                found.insert(rest[..end].to_string());
            }
        }
        found
    };
    let header = names(include_str!("../include/ms_auth.h"));
    let contract = names(include_str!("../docs/c-abi.md"));
    assert!(!header.is_empty());
    assert_eq!(header, contract, "docs/c-abi.md and include/ms_auth.h disagree on the functions");
}
