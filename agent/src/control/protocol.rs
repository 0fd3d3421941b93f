//! What goes over the control socket: the request and response types, how
//! a request line is parsed (what the fuzzer exercises) and the one-line
//! framing both ends use.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::status::Status;

/// Longest request line, without its `\n`.
pub const MAX_REQUEST: usize = 4096;

/// A request, as the client sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// Everything [`Status`] holds.
    Status,
    /// The status as Prometheus text.
    Metrics,
    /// Announce one pair's addresses now, or every pair's.
    Announce {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pair: Option<String>,
    },
    /// Read the configuration file again.
    Reload,
}

impl Request {
    /// Whether the request changes anything, and so needs root.
    pub fn needs_root(&self) -> bool {
        matches!(self, Request::Announce { .. } | Request::Reload)
    }

    /// The command's name on the wire.
    pub fn command(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Metrics => "metrics",
            Request::Announce { .. } => "announce",
            Request::Reload => "reload",
        }
    }
}

/// A response. On the wire: `{"ok":true,"<kind>":...}` or
/// `{"ok":false,"error":"..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "WireResponse", into = "WireResponse")]
pub enum Response {
    Status(Box<Status>),
    Metrics(String),
    /// The pairs that announced.
    Announced(Vec<String>),
    Reloaded,
    Error(String),
}

/// [`Response`] as it is written: one flat object, so that a shell script
/// can test `.ok` and read one field.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireResponse {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<Box<Status>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metrics: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    announced: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reloaded: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl From<Response> for WireResponse {
    fn from(response: Response) -> Self {
        let mut wire = WireResponse {
            ok: true,
            status: None,
            metrics: None,
            announced: None,
            reloaded: None,
            error: None,
        };
        match response {
            Response::Status(status) => wire.status = Some(status),
            Response::Metrics(text) => wire.metrics = Some(text),
            Response::Announced(pairs) => wire.announced = Some(pairs),
            Response::Reloaded => wire.reloaded = Some(true),
            Response::Error(message) => {
                wire.ok = false;
                wire.error = Some(message);
            }
        }
        wire
    }
}

impl TryFrom<WireResponse> for Response {
    type Error = String;

    fn try_from(wire: WireResponse) -> Result<Self, String> {
        if !wire.ok {
            return Ok(Response::Error(
                wire.error
                    .unwrap_or_else(|| "failed (no reason given)".into()),
            ));
        }
        match wire {
            WireResponse {
                status: Some(status),
                metrics: None,
                announced: None,
                reloaded: None,
                error: None,
                ..
            } => Ok(Response::Status(status)),
            WireResponse {
                status: None,
                metrics: Some(text),
                announced: None,
                reloaded: None,
                error: None,
                ..
            } => Ok(Response::Metrics(text)),
            WireResponse {
                status: None,
                metrics: None,
                announced: Some(pairs),
                reloaded: None,
                error: None,
                ..
            } => Ok(Response::Announced(pairs)),
            WireResponse {
                status: None,
                metrics: None,
                announced: None,
                reloaded: Some(true),
                error: None,
                ..
            } => Ok(Response::Reloaded),
            _ => Err(
                "a successful response needs exactly one of `status`, `metrics`, \
                      `announced` or `reloaded: true`"
                    .into(),
            ),
        }
    }
}

/// Parses one request line (without its `\n`) as the server does; the
/// error is the message the client gets back. Untrusted input: any bytes
/// up to [`MAX_REQUEST`] long (fuzzed by `fuzz/fuzz_targets/control_request.rs`).
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(line).map_err(|_| "request is not UTF-8".to_owned())?;
    serde_json::from_str(text.trim()).map_err(|e| {
        format!("bad request: {e}; expected one JSON object such as {{\"command\":\"status\"}}")
    })
}

pub(super) fn response_line(response: &Response) -> Vec<u8> {
    // Serialising our own types into memory cannot fail; should it ever,
    // the client still gets a valid line.
    let mut line = serde_json::to_vec(response)
        .unwrap_or_else(|_| br#"{"ok":false,"error":"internal error"}"#.to_vec());
    line.push(b'\n');
    line
}

/// How reading a line ended.
pub(super) enum Line {
    /// Up to (not including) the `\n`.
    Complete(Vec<u8>),
    /// EOF after some bytes but no `\n` (a half-closed client).
    Eof(Vec<u8>),
    /// EOF before any byte.
    Empty,
    /// More than the limit without a `\n`.
    TooLong,
}

/// Reads one line of at most `limit` bytes, all of it by `deadline`: a
/// per-read timeout alone would let a client trickle a byte at a time.
pub(super) fn read_line(
    mut stream: &UnixStream,
    limit: usize,
    deadline: Instant,
) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        // One byte past the limit tells "exactly at the limit" from "over".
        let want = (limit + 1 - buf.len()).min(chunk.len());
        let n = match stream.read(&mut chunk[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(if buf.is_empty() {
                Line::Empty
            } else {
                Line::Eof(buf)
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            if end > limit {
                return Ok(Line::TooLong);
            }
            buf.truncate(end);
            return Ok(Line::Complete(buf));
        }
        if buf.len() > limit {
            return Ok(Line::TooLong);
        }
    }
}

/// `write_all` that gives up at `deadline` rather than per write.
pub(super) fn write_all_by(
    mut stream: &UnixStream,
    mut data: &[u8],
    deadline: Instant,
) -> std::io::Result<()> {
    while !data.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(left))?;
        match stream.write(data) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Socket timeouts surface as `WouldBlock` (EAGAIN) on Linux.
pub(super) fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_on_the_wire() {
        let cases = [
            (Request::Status, r#"{"command":"status"}"#),
            (Request::Metrics, r#"{"command":"metrics"}"#),
            (
                Request::Announce { pair: None },
                r#"{"command":"announce"}"#,
            ),
            (
                Request::Announce {
                    pair: Some("main".into()),
                },
                r#"{"command":"announce","pair":"main"}"#,
            ),
            (Request::Reload, r#"{"command":"reload"}"#),
        ];
        for (request, json) in cases {
            assert_eq!(serde_json::to_string(&request).unwrap(), json);
            assert_eq!(serde_json::from_str::<Request>(json).unwrap(), request);
        }
        assert!(Request::Reload.needs_root());
        assert!(Request::Announce { pair: None }.needs_root());
        assert!(!Request::Status.needs_root());
        assert!(!Request::Metrics.needs_root());
        for bad in [
            r#"{"command":"shutdown"}"#,
            r#"{"pair":"main"}"#,
            "[]",
            "status",
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parse_request_is_what_the_server_reads() {
        assert_eq!(
            parse_request(b" {\"command\":\"status\"}\r"),
            Ok(Request::Status)
        );
        assert_eq!(
            parse_request(br#"{"command":"announce","pair":"main"}"#),
            Ok(Request::Announce {
                pair: Some("main".into())
            })
        );
        assert_eq!(
            parse_request(b"\xff{}"),
            Err("request is not UTF-8".to_owned())
        );
        let e = parse_request(br#"{"command":"shutdown"}"#).unwrap_err();
        assert!(
            e.starts_with("bad request: unknown variant `shutdown`"),
            "{e}"
        );
        assert!(parse_request(b"").unwrap_err().starts_with("bad request: "));
    }

    #[test]
    fn responses_on_the_wire() {
        let cases = [
            (
                Response::Metrics("x 1\n".into()),
                r#"{"ok":true,"metrics":"x 1\n"}"#,
            ),
            (
                Response::Announced(vec!["main".into()]),
                r#"{"ok":true,"announced":["main"]}"#,
            ),
            (Response::Reloaded, r#"{"ok":true,"reloaded":true}"#),
            (Response::Error("no".into()), r#"{"ok":false,"error":"no"}"#),
        ];
        for (response, json) in cases {
            assert_eq!(serde_json::to_string(&response).unwrap(), json);
            assert_eq!(serde_json::from_str::<Response>(json).unwrap(), response);
        }
        let status = Status {
            version: "0.1.0".into(),
            pid: 1,
            uptime_secs: 1.5,
            pairs: vec![],
            refused: vec![],
        };
        let json = serde_json::to_string(&Response::Status(Box::new(status.clone()))).unwrap();
        assert!(
            json.starts_with(r#"{"ok":true,"status":{"version":"0.1.0","#),
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<Response>(&json).unwrap(),
            Response::Status(Box::new(status))
        );
        assert_eq!(
            serde_json::from_str::<Response>(r#"{"ok":false}"#).unwrap(),
            Response::Error("failed (no reason given)".into())
        );
        for bad in [
            r#"{"ok":true}"#,
            r#"{"ok":true,"reloaded":false}"#,
            r#"{"ok":true,"metrics":"","announced":[]}"#,
            r#"{"ok":true,"surprise":1}"#,
        ] {
            assert!(serde_json::from_str::<Response>(bad).is_err(), "{bad}");
        }
    }
}
