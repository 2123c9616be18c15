//! The `tern` daemon: parse the command line, set up logging, start the relay,
//! and turn signals into stop (SIGTERM, SIGINT) and reload (SIGHUP).

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use tern::cli::{dev_banner, Cli, Command, Flags, Origin};
use tern::{Config, Relay};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { file }) => check_config(&file),
        None => run(&cli.flags),
    }
}

/// `tern check-config FILE`: one line on stdout and exit 0, or the error on
/// stderr and exit 1.
#[allow(clippy::print_stdout)] // the summary is this subcommand's output
fn check_config(file: &Path) -> ExitCode {
    let checked = Config::load(file).and_then(|c| c.validate().map(|v| (c, v)));
    match checked {
        Ok((config, validated)) => {
            println!("{}: ok: {}", file.display(), config.summary(&validated));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

fn run(flags: &Flags) -> ExitCode {
    let (config, origin) = match flags.resolve() {
        Ok(c) => c,
        Err(e) => {
            match &flags.config {
                Some(path) => eprintln!("tern: {}: {e}", path.display()),
                None => eprintln!("tern: {e}"),
            }
            return ExitCode::FAILURE;
        }
    };
    init_logging(&config.log_level);
    if let Some(banner) = dev_banner(&config, &origin) {
        tracing::info!("{banner}");
    }

    // Block the signals we handle before any worker exists, so every thread
    // inherits the mask and only this thread's sigwait sees them.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    if let Err(e) = signals.thread_block() {
        tracing::error!(error = %e, "cannot block signals");
        return ExitCode::FAILURE;
    }

    let relay = match Relay::start(config) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };

    loop {
        match signals.wait() {
            Ok(Signal::SIGHUP) => reload(flags, &origin, &relay),
            Ok(signal) => {
                tracing::info!(%signal, "stopping");
                break;
            }
            Err(e) => {
                tracing::error!(error = %e, "waiting for signals failed; stopping");
                break;
            }
        }
    }
    // Graceful drain (relay.set_draining, then wait) is a later step; now: stop.
    relay.shutdown();
    ExitCode::SUCCESS
}

/// SIGHUP: re-read the file (with the same flags on top) and apply what can change.
fn reload(flags: &Flags, origin: &Origin, relay: &tern::RelayHandle) {
    if !matches!(origin, Origin::File(_)) {
        tracing::info!("SIGHUP: no --config file to re-read; nothing reloaded");
        return;
    }
    match flags
        .resolve()
        .and_then(|(config, _)| relay.reload(&config))
    {
        Ok(()) => {}
        Err(e) => tracing::error!("SIGHUP: reload failed, keeping the running configuration: {e}"),
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: journald and log files get plain text.
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}
