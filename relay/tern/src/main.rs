//! The `tern` daemon: parse the command line, set up logging, start the relay,
//! and turn signals into drain-then-stop (SIGTERM, SIGINT; a second one stops
//! at once) and reload (SIGHUP). The process exits 0 once a drain is over
//! (no allocation left, or `drain-timeout` passed), whether SIGTERM or
//! `POST /admin/drain` started it.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use crossbeam::channel;
use nix::sys::signal::{SigSet, Signal};
use tern::cli::{dev_banner, Cli, Command, Flags, Origin};
use tern::{Config, DrainCause, Lifecycle, Notifier, Relay};

/// How often the main thread looks whether a drain is over.
const DRAIN_POLL: Duration = Duration::from_millis(100);

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

    // sigwait on a thread of its own, so this one can also watch the drain.
    let (signal_tx, signal_rx) = channel::bounded(8);
    let spawned = std::thread::Builder::new()
        .name("tern-signals".to_owned())
        .spawn(move || loop {
            let got = signals.wait();
            let failed = got.is_err();
            if signal_tx.send(got).is_err() || failed {
                break;
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the signal thread");
        return ExitCode::FAILURE;
    }

    let relay = match Relay::start_notifying(config, Notifier::from_env()) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };

    let mut stop_signals = 0;
    loop {
        match signal_rx.recv_timeout(DRAIN_POLL) {
            Ok(Ok(Signal::SIGHUP)) => reload(flags, &origin, &relay),
            Ok(Ok(signal)) => {
                stop_signals += 1;
                if stop_signals > 1 {
                    tracing::info!(%signal, "second stop signal: stopping now");
                    break;
                }
                // Drain first: once this line is logged, /readyz already says 503.
                relay.drain(DrainCause::Stop);
                tracing::info!(%signal, "draining before stopping; send it again to stop at once");
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "waiting for signals failed; stopping");
                break;
            }
            Err(channel::RecvTimeoutError::Timeout) => {}
            Err(channel::RecvTimeoutError::Disconnected) => {
                tracing::error!("the signal thread ended; stopping");
                break;
            }
        }
        if relay.lifecycle() == Lifecycle::Drained {
            tracing::info!("drained: stopping");
            break;
        }
    }
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
