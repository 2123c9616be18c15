//! Network namespaces a test creates for itself (root only), each deleted when its guard
//! drops, so a failing assertion never leaves one behind.
//!
//! - [`Netns`]: `ip netns add NAME` with loopback up; `ip netns del` on drop (which also
//!   deletes the veth ends inside it).
//! - [`Netns::command`]: a [`Command`] that runs a program inside the namespace through
//!   `ip netns exec` (which execs it: the child's PID is the program's).
//! - [`Netns::run`]: a closure on a short-lived thread that joined the namespace with
//!   `setns(2)`; sockets it creates stay in that namespace when used from any thread.
//!
//! Names carry the test's prefix and the PID of the test process
//! (`<prefix>-<role>-<pid>`), so tests running side by side never collide;
//! [`remove_stale`] deletes namespaces with a prefix whose creating process is gone (left
//! by a test that was killed).

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// True when this process runs as root (namespaces, veths and nftables need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A named network namespace with its loopback up; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add <prefix>-<role>-<pid>` and `ip -n NAME link set lo up`.
    pub fn create(prefix: &str, role: &str) -> io::Result<Netns> {
        let name = format!("{prefix}-{role}-{}", std::process::id());
        run_checked(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS...`, failing with ip's stderr.
    pub fn ip(&self, args: &[&str]) -> io::Result<()> {
        run_checked(Command::new("ip").arg("-n").arg(&self.name).args(args)).map(|_| ())
    }

    /// A command running `program` inside this namespace (`ip netns exec NAME program`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `program ARGS...` inside the namespace with `input` on its standard input;
    /// fails with its stderr when it exits non-zero.
    pub fn run_with_input(&self, program: &str, args: &[&str], input: &str) -> io::Result<()> {
        let mut child = self
            .command(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        check(&format!("{program} {}", args.join(" ")), out).map(|_| ())
    }

    /// Runs `program ARGS...` inside the namespace and returns its standard output.
    pub fn output(&self, program: &str, args: &[&str]) -> io::Result<String> {
        let out = run_checked(self.command(program).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `f` on a new thread inside this namespace and returns its result. Sockets made
    /// there belong to the namespace for good. Start no child processes from `f`.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        let handle = File::open(PathBuf::from("/run/netns").join(&self.name))?;
        std::thread::scope(|s| {
            s.spawn(move || {
                setns(&handle, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                Ok(f())
            })
            .join()
            .map_err(|_| io::Error::other("thread inside the namespace panicked"))?
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _best_effort = run_checked(Command::new("ip").args(["netns", "del", &self.name]));
    }
}

/// A veth pair from `a`'s `a_dev` to `b`'s `b_dev`, both ends created directly inside
/// their namespaces (never in the test's own), with `a_addr`/`b_addr` (CIDR) and up;
/// returns once both ends have carrier (5 s at most).
pub fn veth(
    (a, a_dev, a_addr): (&Netns, &str, &str),
    (b, b_dev, b_addr): (&Netns, &str, &str),
) -> io::Result<()> {
    run_checked(Command::new("ip").args([
        "link", "add", a_dev, "netns", &a.name, "type", "veth", "peer", "name", b_dev, "netns",
        &b.name,
    ]))?;
    for (ns, dev, addr) in [(a, a_dev, a_addr), (b, b_dev, b_addr)] {
        ns.ip(&["addr", "add", addr, "dev", dev])?;
        ns.ip(&["link", "set", dev, "up"])?;
    }
    for (ns, dev) in [(a, a_dev), (b, b_dev)] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ns
            .output("ip", &["-o", "link", "show", "dev", dev])?
            .contains("LOWER_UP")
        {
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "{dev} in {} has no carrier after 5 s",
                    ns.name
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

/// Deletes the namespaces named `<prefix>-<role>-<pid>` whose `<pid>` is no longer a
/// running process (left behind by a test that was killed before its guards ran), after
/// killing the processes that test had started inside them.
pub fn remove_stale(prefix: &str) {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&format!("{prefix}-")) else {
            continue;
        };
        let Some(pid) = rest.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            let pids = Command::new("ip")
                .args(["netns", "pids", &name])
                .stdin(Stdio::null())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for p in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let _gone_already = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
            let _best_effort = run_checked(Command::new("ip").args(["netns", "del", &name]));
        }
    }
}

fn run_checked(cmd: &mut Command) -> io::Result<Output> {
    let what = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output()?;
    check(&what, out)
}

fn check(what: &str, out: Output) -> io::Result<Output> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(io::Error::other(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
