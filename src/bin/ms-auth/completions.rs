//! `ms-auth completions SHELL`: clap_complete's completion scripts, bash's repaired.

use clap_complete::Shell;

/// The command name the scripts complete.
const BIN: &str = "ms-auth";

/// Prints the completion script for `shell`.
pub fn print(shell: Shell, command: &mut clap::Command) {
    let mut script = Vec::new();
    clap_complete::generate(shell, command, BIN, &mut script);
    let script = String::from_utf8_lossy(&script);
    match shell {
        Shell::Bash => print!("{}", repair_bash(&script)),
        _ => print!("{script}"),
    }
}

/// clap_complete's bash script (clap-rs/clap#6421, still in 4.6.12) tracks the subcommand typed so far as
/// `ms__auth__subcmd__key` but labels the case arm of each subcommand `ms__subcmd__auth__subcmd__key`
/// (the name's hyphen escaped as its subcommand separator), so nothing past the first word completed.
/// The arms get the spelling the tracking uses; once clap_complete agrees with itself this changes
/// nothing.
fn repair_bash(script: &str) -> String {
    const SEPARATOR: &str = "__subcmd__";
    let arm_prefix = format!("{}{SEPARATOR}", BIN.replace('-', SEPARATOR));
    let tracked_prefix = format!("{}{SEPARATOR}", BIN.replace('-', "__"));
    script.replace(&arm_prefix, &tracked_prefix)
}
