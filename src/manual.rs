//! `mcpmux man` and `mcpmux completions SHELL`: the man page and shell completion scripts,
//! generated from the clap definitions in [`crate::cli`] so they always name the flags,
//! environment variables and defaults the binary accepts. Packaging runs both at build time
//! (`scripts/build-deb.sh`); operators can run them on any installed binary.

use std::io::Write;
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::roff::{Roff, bold, roman};

use crate::cli::Cli;

/// The DESCRIPTION section (the README's opening, for operators).
const DESCRIPTION: &str = "mcpmux serves many tenants' stdio MCP servers on one Streamable HTTP \
endpoint, /mcp. Each request names its tenant in the X-Client-ID header; mcpmux reads that \
tenant's client file, ID.json in the clients directory, starts or reuses the tenant's child \
process from it, and carries MCP JSON-RPC between the HTTP callers and the child's stdin and \
stdout. Idle children are stopped after their TTL; added, edited or deleted client files take \
effect without a restart. Health, readiness, Prometheus metrics and per-tenant status are \
served on the admin address. Without a command, mcpmux runs the daemon (serve).";

/// Prints the roff source of `mcpmux(1)` on stdout.
pub fn print_man() -> ExitCode {
    write_stdout(&man_page())
}

/// Prints the completion script for `shell` on stdout.
pub fn print_completions(shell: Shell) -> ExitCode {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "mcpmux", &mut script);
    write_stdout(&script)
}

/// The whole man page: clap's sections (synopsis, every flag with its environment variable
/// and default), one entry per command, then the operator's sections clap cannot know.
pub fn man_page() -> Vec<u8> {
    let cmd = Cli::command()
        .about("many tenants' stdio MCP servers behind one Streamable HTTP endpoint")
        .long_about(DESCRIPTION);
    let mut commands = Roff::new();
    commands.control("SH", ["COMMANDS"]);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        commands.control("TP", []);
        commands.text([bold(command_usage(sub))]);
        commands.text([roman(
            sub.get_about().map(|a| a.to_string()).unwrap_or_default(),
        )]);
    }
    let man = clap_mangen::Man::new(cmd)
        .manual("System Administration")
        .source(concat!("mcpmux ", env!("CARGO_PKG_VERSION")));
    let mut page = Vec::new();
    // Rendering into a Vec cannot fail: its writer never returns an error.
    let _ = man.render_title(&mut page);
    let _ = man.render_name_section(&mut page);
    let _ = man.render_synopsis_section(&mut page);
    let _ = man.render_description_section(&mut page);
    let _ = man.render_options_section(&mut page);
    let _ = commands.to_writer(&mut page);
    let mut extra = Roff::new();
    section(
        &mut extra,
        "EXIT STATUS",
        &[
            "0 after a clean stop (or a valid clients directory for check).",
            "1 for a runtime failure, e.g. an address in use, or bad client files for check.",
            "64 for a bad flag, value or environment variable, checked before anything is bound.",
        ],
    );
    section(
        &mut extra,
        "SIGNALS",
        &[
            "SIGHUP rescans the clients directory (systemctl reload mcpmux).",
            "SIGTERM or SIGINT stops accepting, drains in-flight requests for --shutdown-grace, \
             stops every child and exits 0; a second signal skips the drain.",
        ],
    );
    section(
        &mut extra,
        "FILES",
        &[
            "/etc/mcpmux/clients/ID.json: one client file per tenant (the package's --clients).",
            "/etc/mcpmux/mcpmux.env: flags for the systemd unit as MCPMUX_* variables.",
            "/var/lib/mcpmux/: the service's state directory and HOME.",
            "/usr/share/doc/mcpmux/examples/: example client files.",
        ],
    );
    extra.control("SH", ["SEE ALSO"]);
    extra.text([
        bold("systemctl"),
        roman("(1), "),
        bold("systemd.service"),
        roman("(5), "),
        bold("systemd.socket"),
        roman("(5); /usr/share/doc/mcpmux/README.md."),
    ]);
    let _ = extra.to_writer(&mut page);
    page
}

/// `mcpmux NAME [ARG]...`, with `<ARG>` for a required argument and the choices of an
/// enumerated one (`completions <bash|elvish|...>`).
fn command_usage(sub: &clap::Command) -> String {
    let mut usage = format!("mcpmux {}", sub.get_name());
    for arg in sub.get_positionals() {
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| v.get_name().to_string())
            .collect();
        let name = if values.is_empty() {
            arg.get_id().as_str().to_uppercase()
        } else {
            values.join("|")
        };
        if arg.is_required_set() {
            usage.push_str(&format!(" <{name}>"));
        } else {
            usage.push_str(&format!(" [{name}]"));
        }
    }
    if sub.get_name() == "serve" {
        usage.push_str(" [OPTIONS]");
    }
    usage
}

/// One `.SH` section of one paragraph per line.
fn section(roff: &mut Roff, title: &str, paragraphs: &[&str]) {
    roff.control("SH", [title]);
    for paragraph in paragraphs {
        roff.control("PP", []);
        roff.text([roman(*paragraph)]);
    }
}

/// Writes `bytes` to stdout; a closed pipe (`mcpmux man | head`) is a failure, not a panic.
fn write_stdout(bytes: &[u8]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mcpmux: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}
