//! Generates the C header from src/ffi.rs and its parts in src/ffi/ (only ffi knows about C) into OUT_DIR. The committed include/ms_auth.h must equal it:
//! tests/header.rs fails when they differ (and rewrites it when MS_AUTH_BLESS=1).
fn main() {
    println!("cargo:rerun-if-changed=src/ffi.rs");
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let crate_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("ms_auth.h");
    let config = cbindgen::Config::from_file(format!("{crate_dir}/cbindgen.toml")).expect("cbindgen.toml is valid");
    cbindgen::Builder::new()
        .with_src(format!("{crate_dir}/src/ffi.rs"))
        .with_config(config)
        .generate()
        .expect("cbindgen can read src/ffi.rs")
        .write_to_file(out);
}
