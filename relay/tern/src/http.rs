//! A deliberately small HTTP/1.1 server side for the admin endpoint: one
//! request per connection, bounded head and body, a deadline for the whole
//! request, `Connection: close` on every answer.
//!
//! It parses only what the admin routes need (method, path, `Authorization`,
//! `Content-Length`) and answers everything else it cannot take with a 4xx/5xx
//! and a one-line reason. Nothing that arrives on the socket can make it
//! panic or hold a thread beyond [`REQUEST_DEADLINE`].

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Largest request head (request line and headers) accepted.
pub(crate) const MAX_HEAD: usize = 8 * 1024;
/// Largest request body accepted (the SFU API's JSON; the admin actions take none).
pub(crate) const MAX_BODY: usize = 16 * 1024;
/// The whole request must arrive within this long.
pub(crate) const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Writing the answer may take this long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A parsed request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) method: String,
    /// The path, without query string.
    pub(crate) path: String,
    pub(crate) authorization: Option<String>,
    /// The body (at most [`MAX_BODY`] bytes).
    pub(crate) body: Vec<u8>,
}

/// Why no request could be read; [`Reject::response`] says what to answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reject {
    /// The peer closed (or reset) before sending a full head: answer nothing.
    Closed,
    /// The deadline passed: answer 408.
    Timeout,
    /// The head is larger than [`MAX_HEAD`]: 431.
    HeadTooLarge,
    /// The body is larger than [`MAX_BODY`]: 413.
    BodyTooLarge,
    /// A body with Transfer-Encoding: 501.
    Unsupported,
    /// An HTTP version other than 1.0 or 1.1: 505.
    Version,
    /// Anything else malformed: 400, with the reason.
    Bad(&'static str),
}

impl Reject {
    /// The answer, if the peer is still there to read one.
    pub(crate) fn response(&self) -> Option<Response> {
        let (status, reason) = match self {
            Reject::Closed => return None,
            Reject::Timeout => (408, "request not received in time"),
            Reject::HeadTooLarge => (431, "request head too large"),
            Reject::BodyTooLarge => (413, "request body too large"),
            Reject::Unsupported => (501, "Transfer-Encoding is not supported"),
            Reject::Version => (505, "only HTTP/1.0 and HTTP/1.1 are served"),
            Reject::Bad(why) => (400, *why),
        };
        Some(Response::text(status, format!("{reason}\n")))
    }
}

/// An answer.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) content_type: &'static str,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: Vec<u8>,
}

impl Response {
    pub(crate) fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: body.into().into_bytes(),
        }
    }

    pub(crate) fn json(status: u16, body: String) -> Response {
        Response {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: body.into_bytes(),
        }
    }

    pub(crate) fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }
}

/// Read one request from `stream`, within [`REQUEST_DEADLINE`] of now.
pub(crate) fn read_request(stream: &mut TcpStream) -> Result<Request, Reject> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut buf = vec![0u8; MAX_HEAD];
    let mut scanned: usize = 0;
    let mut filled = 0;
    let head_end = loop {
        // Rescan only the new bytes (and the three before them), so a peer
        // trickling one byte at a time costs linear work.
        if let Some(end) = find_head_end(&buf[..filled], scanned.saturating_sub(3)) {
            break end;
        }
        scanned = filled;
        if filled == buf.len() {
            return Err(Reject::HeadTooLarge);
        }
        let n = read_some(stream, &mut buf[filled..], deadline)?;
        if n == 0 {
            return Err(Reject::Closed);
        }
        filled += n;
    };
    let (mut request, content_length) = parse_head(&buf[..head_end.0])?;
    // Read the body, bounded by MAX_BODY (parse_head refused more).
    let mut body = buf[head_end.1..filled.min(head_end.1 + content_length)].to_vec();
    body.resize(content_length, 0);
    let mut got = filled.saturating_sub(head_end.1).min(content_length);
    while got < content_length {
        let n = read_some(stream, &mut body[got..], deadline)?;
        if n == 0 {
            return Err(Reject::Closed);
        }
        got += n;
    }
    request.body = body;
    Ok(request)
}

/// `(end of the head without its blank line, start of the body)`.
fn find_head_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    for i in from..buf.len() {
        if buf[i..].starts_with(b"\r\n\r\n") {
            return Some((i, i + 4));
        }
        if buf[i..].starts_with(b"\n\n") {
            return Some((i, i + 2));
        }
    }
    None
}

fn read_some(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Result<usize, Reject> {
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(Reject::Timeout)?;
        stream
            .set_read_timeout(Some(left))
            .map_err(|_| Reject::Closed)?;
        match stream.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Reject::Timeout)
            }
            Err(_) => return Err(Reject::Closed),
        }
    }
}

/// Parse the request line and headers; returns the request and its Content-Length.
pub(crate) fn parse_head(head: &[u8]) -> Result<(Request, usize), Reject> {
    let head = std::str::from_utf8(head).map_err(|_| Reject::Bad("request head is not UTF-8"))?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reject::Bad("malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(is_token) {
        return Err(Reject::Bad("malformed method"));
    }
    if !target.starts_with('/') || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Reject::Bad("malformed request target"));
    }
    if !version.starts_with("HTTP/") {
        return Err(Reject::Bad("malformed HTTP version"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(Reject::Version);
    }
    let path = target.split('?').next().unwrap_or(target).to_owned();
    let mut authorization = None;
    let mut content_length: Option<usize> = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(Reject::Bad("malformed header line"));
        };
        if name.is_empty() || !name.bytes().all(is_token) {
            return Err(Reject::Bad("malformed header name"));
        }
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        if name.eq_ignore_ascii_case("authorization") {
            if authorization.is_some() {
                return Err(Reject::Bad("Authorization given twice"));
            }
            authorization = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("content-length") {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Reject::Bad("malformed Content-Length"));
            }
            let n: usize = value.parse().map_err(|_| Reject::BodyTooLarge)?;
            if content_length.is_some_and(|c| c != n) {
                return Err(Reject::Bad("conflicting Content-Length"));
            }
            if n > MAX_BODY {
                return Err(Reject::BodyTooLarge);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Reject::Unsupported);
        }
    }
    Ok((
        Request {
            method: method.to_owned(),
            path,
            authorization,
            body: Vec::new(),
        },
        content_length.unwrap_or(0),
    ))
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Write `response` (without its body for HEAD) and close.
pub(crate) fn write_response(stream: &mut TcpStream, response: &Response, head_only: bool) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        response.status,
        reason_phrase(response.status),
        response.content_type,
        response.body.len()
    );
    for (name, value) in &response.headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut all = head.into_bytes();
    if !head_only {
        all.extend_from_slice(&response.body);
    }
    // The peer may be gone; there is no one to tell.
    let _ = stream.write_all(&all);
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_request() {
        let (r, len) = parse_head(
            b"POST /admin/drain?x=1 HTTP/1.1\r\nHost: a\r\nauthorization:  Bearer t  \r\nContent-Length: 2",
        )
        .unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/admin/drain");
        assert_eq!(r.authorization.as_deref(), Some("Bearer t"));
        assert_eq!(len, 2);
    }

    #[test]
    fn rejects_bad_heads() {
        let cases: [(&[u8], Reject); 9] = [
            (b"GET /", Reject::Bad("malformed request line")),
            (b"GET / HTTP/1.1 x", Reject::Bad("malformed request line")),
            (b"G(T / HTTP/1.1", Reject::Bad("malformed method")),
            (b"GET x HTTP/1.1", Reject::Bad("malformed request target")),
            (b"GET / HTTP/2.0", Reject::Version),
            (
                b"GET / HTTP/1.1\r\nno colon",
                Reject::Bad("malformed header line"),
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: -1",
                Reject::Bad("malformed Content-Length"),
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999",
                Reject::BodyTooLarge,
            ),
            (
                b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked",
                Reject::Unsupported,
            ),
        ];
        for (head, want) in cases {
            assert_eq!(
                parse_head(head).unwrap_err(),
                want,
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
        assert!(parse_head(b"\xff\xfe / HTTP/1.1").is_err());
        assert!(parse_head(b"").is_err());
    }

    #[test]
    fn finds_the_end_of_the_head() {
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\n\r\nbody", 0),
            Some((14, 18))
        );
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\n", 10), Some((14, 16)));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n", 0), None);
    }
}
