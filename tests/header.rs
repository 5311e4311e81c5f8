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
