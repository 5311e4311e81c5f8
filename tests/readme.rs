//! What the README shows must be what is built and tested.

const README: &str = include_str!("../README.md");

#[test]
fn the_c_example_is_the_tested_one() {
    let example = include_str!("c/example.c");
    assert!(README.contains(example), "README.md must quote tests/c/example.c verbatim");
}

#[test]
fn the_secret_scanner_regex_is_the_one_in_the_code() {
    assert!(README.contains(ms_auth::key::KEY_REGEX));
}

#[test]
fn ci_runs_the_readme_test_command() {
    let ci = include_str!("../.ci/run");
    assert!(README.contains("bash scripts/test.sh") && ci.contains("bash scripts/test.sh"));
}

/// The README's opening, before its first section.
fn opening() -> &'static str {
    &README[..README.find("\n## ").expect("README.md has sections")]
}

#[test]
fn the_opening_names_the_header_that_carries_the_key() {
    let header = include_str!("../include/ms_auth.h");
    assert!(header.contains("the NUL-terminated value of the X-API-Key header"));
    assert!(opening().contains("`X-API-Key`"), "the README's opening must name the X-API-Key header");
}

#[test]
fn both_readmes_say_the_same_about_who_creates_the_nginx_modules_store() {
    let nginx_readme = include_str!("../bindings/nginx/README.md");
    let module = include_str!("../bindings/nginx/ngx_http_ms_auth_module.c");
    // The module refuses a missing store and names the CLI command that creates one.
    assert!(module.contains(r#"create the store with \"ms-auth --db %s key create\""#));
    for (name, text) in [("README.md", README), ("bindings/nginx/README.md", nginx_readme)] {
        for line in [
            "The module never creates the store",
            "install -d -o www-data -g www-data /var/lib/ms-auth",
            "runuser -u www-data -- ms-auth --db /var/lib/ms-auth/keys.db key create",
        ] {
            assert!(text.contains(line), "{name} must say: {line}");
        }
    }
}
