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
