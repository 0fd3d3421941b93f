//! The client behind `vfailover status`, `metrics`, `announce` and
//! `reload`.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::unistd::{Gid, Group};

use super::protocol::{is_timeout, read_line, write_all_by, Line, Request, Response};

/// Longest response line the client accepts; a status with many pairs
/// is a few KiB, this only stops a runaway peer.
const MAX_RESPONSE: usize = 16 << 20;

/// Sends `request` to the daemon at `path` and returns its answer; a
/// daemon's refusal is `Ok(Response::Error(..))`. `timeout` bounds the
/// whole exchange.
pub fn request(path: &Path, request: &Request, timeout: Duration) -> Result<Response> {
    let deadline = Instant::now() + timeout;
    let stream = UnixStream::connect(path).map_err(|e| connect_error(path, &e))?;
    let mut line = serde_json::to_vec(request).context("cannot encode the request")?;
    line.push(b'\n');
    // A server that turns us away ("busy") may close before it reads the
    // request, failing the write; its answer is still there to read.
    let sent = write_all_by(&stream, &line, deadline);
    if let Err(e) = &sent {
        if is_timeout(e) {
            bail!(
                "the daemon at {} did not take the request within {timeout:?}",
                path.display()
            );
        }
    }
    let answer = match (read_line(&stream, MAX_RESPONSE, deadline), sent) {
        (Ok(Line::Complete(line) | Line::Eof(line)), _) => line,
        (_, Err(e)) => bail!(
            "cannot send the request to {}: {}",
            path.display(),
            describe(&e)
        ),
        (Ok(Line::Empty), Ok(())) => bail!(
            "the daemon at {} closed the connection without answering",
            path.display()
        ),
        (Ok(Line::TooLong), Ok(())) => {
            bail!("the daemon's answer is longer than {MAX_RESPONSE} bytes")
        }
        (Err(e), Ok(())) if is_timeout(&e) => bail!(
            "no answer from the daemon at {} within {timeout:?}",
            path.display()
        ),
        (Err(e), Ok(())) => bail!(
            "cannot read the answer from {}: {}",
            path.display(),
            describe(&e)
        ),
    };
    serde_json::from_slice(&answer).with_context(|| {
        format!(
            "the daemon's answer is not a valid response: {}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        )
    })
}

/// An OS error as `strerror` says it, without Rust's "(os error N)".
fn describe(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => Errno::from_raw(code).desc().to_owned(),
        None => e.to_string(),
    }
}

/// What a user should try, for each way connecting fails.
fn connect_error(path: &Path, e: &std::io::Error) -> anyhow::Error {
    let shown = path.display();
    match e.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => anyhow::anyhow!(
            "cannot connect to {shown}: is the daemon running? ({})",
            describe(e)
        ),
        ErrorKind::PermissionDenied => {
            let group = fs::metadata(path)
                .ok()
                .and_then(|meta| Group::from_gid(Gid::from_raw(meta.gid())).ok().flatten())
                .map_or_else(|| crate::config::DEFAULT_GROUP.to_owned(), |g| g.name);
            anyhow::anyhow!("permission denied on {shown}: are you root or in group {group}?")
        }
        _ => anyhow::anyhow!("cannot connect to {shown}: {}", describe(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_read_like_strerror() {
        let e = std::io::Error::from_raw_os_error(Errno::ENOENT as i32);
        assert_eq!(describe(&e), "No such file or directory");
    }
}
