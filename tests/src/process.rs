//! Child processes the tests start (relay binaries, coturn tools, Python scripts).
//!
//! Each child is held by a [`ChildGuard`] that kills it by its own PID when dropped, so a
//! failing assertion never leaves a process behind. Output goes to a log file in a
//! per-test scratch directory, shown by [`ChildGuard::log`] when a test fails.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A running child process, killed (SIGKILL, by PID) on drop if still alive.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    name: String,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    /// Starts `cmd` with stdin closed and stdout+stderr appended to `<dir>/<name>.log`.
    pub fn spawn(cmd: &mut Command, name: &str, dir: &Path) -> io::Result<ChildGuard> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log)?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()?;
        Ok(ChildGuard {
            child,
            name: name.to_owned(),
            log,
            status: None,
        })
    }

    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the child wrote so far (stdout and stderr interleaved).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status if the child has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits at most `timeout` for the child to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` to the child by PID (no-op if it has exited).
    pub fn signal(&mut self, signal: Signal) {
        if self.try_wait().is_none() {
            let pid = i32::try_from(self.child.id()).expect("pid fits i32");
            let _ignored_if_already_gone = kill(Pid::from_raw(pid), signal);
        }
    }

    /// A short description for assertion messages: name, PID and the log's tail.
    pub fn describe(&self) -> String {
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "{} (pid {}), log {}:\n{}",
            self.name,
            self.child.id(),
            self.log.display(),
            tail.join("\n")
        )
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            let _ignored_if_already_gone = self.child.kill();
            let _reaped = self.child.wait();
        }
    }
}

/// Runs `cmd` to completion with a hard time limit, killing it by PID past the limit.
/// Returns its exit status (None on timeout) and its combined output.
pub fn run_with_timeout(
    cmd: &mut Command,
    name: &str,
    dir: &Path,
    timeout: Duration,
) -> io::Result<(Option<ExitStatus>, String)> {
    let mut child = ChildGuard::spawn(cmd, name, dir)?;
    let status = child.wait_timeout(timeout);
    let log = child.log();
    Ok((status, log))
}

/// A fresh scratch directory for one test's logs and files, under the system temp dir.
/// Kept after the test so a failure's logs can be read.
pub fn scratch_dir(test: &str) -> PathBuf {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tern-tests-{}-{n}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}
