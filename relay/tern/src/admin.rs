//! The admin HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, `/load`, and
//! `POST /admin/drain` / `POST /admin/undrain` behind a bearer token, and the
//! SFU control API under `/sfu` (see [`crate::sfu::api`]).
//!
//! One acceptor thread polls the listener (so it notices shutdown) and hands
//! each connection to a short-lived thread, at most [`MAX_CONNECTIONS`] at a
//! time; a slow or hostile client holds one of those for at most
//! [`http::REQUEST_DEADLINE`] and never the acceptor, the collector or a worker.

use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags};

use crate::http::{self, Request, Response};
use crate::side::{DrainCause, Side, TokenCheck};

/// Connections served at once; more are answered 503 at once.
const MAX_CONNECTIONS: usize = 32;
/// How often the acceptor looks at the stop flag when idle.
const POLL: u16 = 200;

/// Accept and serve until `stop` is set.
pub(crate) fn serve(side: Arc<Side>, listener: TcpListener, stop: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, POLL) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "admin endpoint: poll failed; it stops serving");
                return;
            }
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                // ECONNABORTED, EMFILE...: keep serving; back off a little on
                // resource exhaustion so the loop does not spin.
                tracing::debug!(error = %e, "admin endpoint: accept failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if active.load(Ordering::Acquire) >= MAX_CONNECTIONS {
            busy(stream);
            continue;
        }
        active.fetch_add(1, Ordering::AcqRel);
        let guard = Slot(active.clone());
        let side = side.clone();
        let spawned = std::thread::Builder::new()
            .name("tern-admin-conn".to_owned())
            .spawn(move || {
                let _slot = guard;
                serve_one(&side, stream);
            });
        if let Err(e) = spawned {
            // The closure (and its Slot) was dropped: the count is already given back.
            tracing::warn!(error = %e, "admin endpoint: cannot spawn a connection thread");
        }
    }
}

/// Gives a connection slot back when the connection's thread ends, however it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn busy(mut stream: TcpStream) {
    let r = Response::text(503, "too many admin connections\n").with_header("Retry-After", "1");
    let _ = stream.set_nonblocking(true);
    http::write_response(&mut stream, &r, false);
}

fn serve_one(side: &Side, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    match http::read_request(&mut stream) {
        Ok(req) => {
            let response = route(side, &req);
            http::write_response(&mut stream, &response, req.method == "HEAD");
        }
        Err(reject) => {
            tracing::debug!(?reject, "admin endpoint: request rejected");
            if let Some(response) = reject.response() {
                http::write_response(&mut stream, &response, false);
            }
        }
    }
}

/// The answer to `req`.
pub(crate) fn route(side: &Side, req: &Request) -> Response {
    if req.path == "/sfu" || req.path.starts_with("/sfu/") {
        return crate::sfu::api::route(side, req);
    }
    let read_only = matches!(
        req.path.as_str(),
        "/metrics" | "/healthz" | "/readyz" | "/load"
    );
    let action = matches!(req.path.as_str(), "/admin/drain" | "/admin/undrain");
    if read_only && req.method != "GET" && req.method != "HEAD" {
        return Response::text(405, "use GET or HEAD\n").with_header("Allow", "GET, HEAD");
    }
    if action && req.method != "POST" {
        return Response::text(405, "use POST\n").with_header("Allow", "POST");
    }
    match req.path.as_str() {
        "/metrics" => {
            let mut r = Response::text(200, side.render_metrics());
            r.content_type = "text/plain; version=0.0.4; charset=utf-8";
            r
        }
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" => match side.readiness() {
            Ok(()) => Response::text(200, "ready\n"),
            Err(why) => Response::text(503, format!("not ready: {why}\n")),
        },
        "/load" => Response::json(200, side.render_load()),
        "/admin/drain" | "/admin/undrain" => {
            match side.check_token(req.authorization.as_deref()) {
                TokenCheck::Disabled => {
                    return Response::text(
                        403,
                        "admin actions are disabled: no admin-token is configured\n",
                    )
                }
                TokenCheck::Denied => {
                    return Response::text(401, "missing or wrong bearer token\n")
                        .with_header("WWW-Authenticate", "Bearer realm=\"tern-admin\"")
                }
                TokenCheck::Granted => {}
            }
            if req.path == "/admin/drain" {
                tracing::info!("POST /admin/drain");
                side.drain(DrainCause::Admin);
                Response::json(200, state_json(side))
            } else {
                tracing::info!("POST /admin/undrain");
                match side.undrain() {
                    Ok(()) => Response::json(200, state_json(side)),
                    Err(e) => Response::text(409, format!("{e}\n")),
                }
            }
        }
        _ => Response::text(404, "not found\n"),
    }
}

fn state_json(side: &Side) -> String {
    format!("{{\"state\":\"{}\"}}", side.lifecycle().as_str())
}
