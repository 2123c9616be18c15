//! A hand-written progress bar on stderr for long runs, drawn only when
//! stderr is a terminal. It redraws one line (`\r`) five times a second
//! from its own thread and erases that line when dropped, so the lines the
//! harness prints between windows stay clean.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Whether stderr is a terminal.
pub fn stderr_is_tty() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(libc::STDERR_FILENO) == 1 }
}

/// The overall position shown before the bar, e.g. `run 4/9 tern`.
static STAGE: Mutex<String> = Mutex::new(String::new());

/// Set the text shown before every bar from now on (e.g. `run 4/9 tern`).
pub fn set_stage(s: &str) {
    if let Ok(mut g) = STAGE.lock() {
        s.clone_into(&mut g);
    }
}

/// One line of the bar: `stage label [#####·····]  42 %  2.1/5.0 s`.
pub fn render(stage: &str, label: &str, done: Duration, total: Duration, width: usize) -> String {
    let frac = if total.is_zero() {
        1.0
    } else {
        (done.as_secs_f64() / total.as_secs_f64()).clamp(0.0, 1.0)
    };
    let full = (frac * width as f64).round() as usize;
    let mut s = String::new();
    if !stage.is_empty() {
        s.push_str(stage);
        s.push(' ');
    }
    s.push_str(label);
    s.push_str(" [");
    s.push_str(&"#".repeat(full));
    s.push_str(&".".repeat(width - full));
    s += &format!(
        "] {:>3.0} % {:.1}/{:.1} s",
        frac * 100.0,
        done.as_secs_f64().min(total.as_secs_f64()),
        total.as_secs_f64()
    );
    s
}

/// A bar for something expected to take `total`; erased on drop. Does
/// nothing (no thread) when stderr is not a terminal.
pub struct Bar {
    stop: Arc<AtomicBool>,
    join: Option<thread::JoinHandle<()>>,
}

impl Bar {
    /// Start a bar labelled `label` for `total` (the label is followed by
    /// the stage set with [`set_stage`]).
    pub fn start(label: &str, total: Duration) -> Bar {
        let stop = Arc::new(AtomicBool::new(false));
        if !stderr_is_tty() {
            return Bar { stop, join: None };
        }
        let (st, label) = (stop.clone(), label.to_owned());
        let stage = STAGE.lock().map(|g| g.clone()).unwrap_or_default();
        let t0 = Instant::now();
        let join = thread::Builder::new()
            .name("tb-progress".into())
            .spawn(move || {
                // Bounded: at most 10 minutes past the expected end.
                let hard_end = total + Duration::from_secs(600);
                while !st.load(Ordering::Relaxed) && t0.elapsed() < hard_end {
                    let line = render(&stage, &label, t0.elapsed(), total, 30);
                    let mut e = std::io::stderr().lock();
                    let _ = write!(e, "\r{line}\x1b[K");
                    let _ = e.flush();
                    drop(e);
                    thread::sleep(Duration::from_millis(200));
                }
                let mut e = std::io::stderr().lock();
                let _ = write!(e, "\r\x1b[K");
                let _ = e.flush();
            })
            .ok();
        Bar { stop, join }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(j) = self.join.take() {
            let _joined = j.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_fraction_and_clamps() {
        let s = render(
            "run 1/3",
            "tern",
            Duration::from_secs(1),
            Duration::from_secs(4),
            8,
        );
        assert_eq!(s, "run 1/3 tern [##......]  25 % 1.0/4.0 s");
        let s = render("", "x", Duration::from_secs(9), Duration::from_secs(4), 4);
        assert_eq!(s, "x [####] 100 % 4.0/4.0 s");
    }
}
