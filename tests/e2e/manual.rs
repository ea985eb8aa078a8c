//! The man page and shell completions (`mcpmux man`, `mcpmux completions SHELL`): generated
//! from the clap definitions, so every flag and environment variable of `--help` must be in
//! them, and `man` must render the page without a warning.

use std::process::Stdio;

use tokio::process::Command;
use tokio::time::timeout;

use crate::interop::ensure_setup;
use crate::util::{STARTUP_TIMEOUT, run_mcpmux};

/// Every `--flag` and `MCPMUX_*` variable `mcpmux --help` shows (the source of truth).
async fn help_names() -> (Vec<String>, Vec<String>) {
    let out = run_mcpmux(&["--help"]).await;
    assert!(out.status.success(), "--help: {out:?}");
    let help = String::from_utf8(out.stdout).unwrap();
    let mut flags = Vec::new();
    let mut envs = Vec::new();
    for word in help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')) {
        if word.starts_with("--") && word.len() > 2 && !flags.iter().any(|f| f == word) {
            flags.push(word.to_string());
        }
        if word.starts_with("MCPMUX_") && !envs.iter().any(|e| e == word) {
            envs.push(word.to_string());
        }
    }
    assert!(
        flags.len() > 10 && envs.len() > 10,
        "help lists flags and env: {help}"
    );
    (flags, envs)
}

/// Runs `program args` with `stdin` closed, bounded; returns (status ok, stdout, stderr).
async fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    // Installs man-db when absent (scripts/install-tools.sh, through the interop set-up).
    ensure_setup();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = timeout(STARTUP_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{program} must finish"))
        .unwrap_or_else(|e| panic!("{program} must start (apt-get install man-db): {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn man_page_renders_without_warnings_and_documents_every_flag_and_variable() {
    let out = run_mcpmux(&["man"]).await;
    assert!(out.status.success(), "mcpmux man: {out:?}");
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("mcpmux.1");
    std::fs::write(&page, &out.stdout).unwrap();

    // A wide page, so no flag is hyphenated across lines; warnings go to stderr.
    let (ok, text, warnings) = run(
        "man",
        &["--warnings", "-P", "cat", "-l", page.to_str().unwrap()],
        &[("MANWIDTH", "250"), ("LC_ALL", "C.UTF-8")],
    )
    .await;
    assert!(ok, "man -l must render the page: {warnings}");
    assert_eq!(warnings, "", "groff warnings while rendering mcpmux.1");
    for heading in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "COMMANDS",
        "EXIT STATUS",
        "FILES",
    ] {
        assert!(
            text.lines().any(|l| l == heading),
            "section {heading} missing:\n{text}"
        );
    }
    assert!(text.contains("mcpmux check [DIR]") && text.contains("mcpmux completions <bash|"));
    assert!(
        !text.contains("mcpmux man"),
        "the man command is hidden:\n{text}"
    );
    let (flags, envs) = help_names().await;
    for flag in flags {
        assert!(
            text.contains(&flag),
            "{flag} is in --help but not in the man page"
        );
    }
    for env in envs {
        assert!(
            text.contains(&env),
            "{env} is in --help but not in the man page"
        );
    }
}

#[tokio::test]
async fn bash_completion_completes_flags_and_subcommands() {
    let out = run_mcpmux(&["completions", "bash"]).await;
    assert!(out.status.success(), "mcpmux completions bash: {out:?}");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("mcpmux.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    // What bash does on TAB: set COMP_WORDS/COMP_CWORD and call the registered function.
    let complete = |line: &'static str| {
        let script = script.clone();
        async move {
            let probe = format!(
                r#"source "$1" && spec=$(complete -p mcpmux) && fn=${{spec#*-F }} && fn=${{fn%% *}} &&
                   COMP_WORDS=({line}) && COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)) &&
                   "$fn" mcpmux "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}" &&
                   printf '%s\n' "${{COMPREPLY[@]}}""#
            );
            let (ok, stdout, stderr) = run(
                "bash",
                &["-c", &probe, "probe", script.to_str().unwrap()],
                &[],
            )
            .await;
            assert!(ok, "completing `{line}` failed: {stderr}");
            stdout.lines().map(str::to_string).collect::<Vec<_>>()
        }
    };
    assert_eq!(complete("mcpmux --max-ch").await, ["--max-children"]);
    let words = complete("mcpmux ch").await;
    assert_eq!(words, ["check"]);
    let shells = complete("mcpmux completions ''").await;
    for shell in ["bash", "zsh", "fish"] {
        assert!(
            shells.iter().any(|s| s == shell),
            "{shell} not offered: {shells:?}"
        );
    }
}

#[tokio::test]
async fn every_shell_gets_a_script_naming_the_flags_and_an_unknown_shell_is_bad_usage() {
    let (flags, _) = help_names().await;
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run_mcpmux(&["completions", shell]).await;
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        for flag in flags.iter().filter(|f| *f != "--help" && *f != "--version") {
            let bare = flag.trim_start_matches('-');
            assert!(script.contains(bare), "{shell} script lacks {flag}");
        }
    }
    let out = run_mcpmux(&["completions", "tcsh"]).await;
    assert_eq!(
        out.status.code(),
        Some(64),
        "an unknown shell is bad usage: {out:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid value 'tcsh'") && stderr.contains("bash"),
        "the error names the bad value and the choices: {stderr}"
    );
    assert!(out.stdout.is_empty(), "no partial script on bad usage");
}
