//! `agent`: parse the command line, set up logging, run, map errors to an exit status.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use lib_agent::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        let searching = e.kind() == clap::error::ErrorKind::UnknownArgument
            && std::env::args_os().skip(1).any(|a| a == "search");
        if searching {
            // clap's own tip names only the first letter of `-foo` (read as the flags -f -o -o).
            let _ = e.print();
            eprintln!(
                "\n  tip: a search query that starts with '-' goes after `--`: `agent search -- -foo`"
            );
            std::process::exit(e.exit_code());
        }
        e.exit()
    });
    // `agent run` is a background agent: its log is how it says what it does (a line per
    // indexed batch and per sync, summarised in bursts), so its default level is info.
    let daemon = matches!(cli.command, cli::Command::Run(_));
    init_logging(cli.global.verbose.saturating_add(u8::from(daemon)));
    let json = cli.global.json;
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let line = one_line(&e);
            // An error may quote what a file or the brain sent: escaped for the terminal.
            eprintln!("agent: error: {}", lib_agent::term::escape(&line));
            // A script reading stdout gets a document too.
            if json && !cli::printed_json() {
                println!("{}", serde_json::json!({ "ok": false, "error": line }));
            }
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = std::env::var("LIB_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        // notify reports its own housekeeping (a watch removed with its folder) at info.
        .unwrap_or_else(|| EnvFilter::new(format!("{default},notify=warn")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .compact()
        .init();
}

/// The error and its causes on one line. Our own error types already name their cause in their
/// message, so the chain stops at the first of them; anyhow contexts above it are kept.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        let ours = cause.is::<lib_agent::store::StoreError>()
            || cause.is::<lib_agent::config::ConfigError>()
            || cause.is::<lib_agent::index::scan::ScanError>()
            || cause.is::<lib_agent::filter::FilterError>()
            || cause.is::<lib_agent::config::edit::EditError>()
            || cause.is::<lib_agent::daemon::DaemonError>();
        if ours {
            break;
        }
    }
    parts.join(": ").replace('\n', " ")
}
