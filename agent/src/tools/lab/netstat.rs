//! A namespace's TCP counters from `/proc/net/netstat`, for telling what the peer's own TCP
//! did: a stall that ends in the peer's retransmission timeout (`TcpExt: TCPTimeouts`) is the
//! peer's floor, not the agent's. The lab and the QEMU test time them with
//! [`watch_tcp_timeouts`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

/// How many retransmission timeouts the TCP of the calling thread's network namespace has had
/// (`TcpExt: TCPTimeouts`).
pub fn tcp_timeouts() -> Result<u64> {
    // thread-self: /proc/net would follow the process's namespace, not this thread's.
    let text = std::fs::read_to_string("/proc/thread-self/net/netstat")
        .context("reading /proc/thread-self/net/netstat")?;
    counter(&text, "TcpExt", "TCPTimeouts").ok_or_else(|| anyhow!("no TcpExt TCPTimeouts"))
}

/// When the TCP of the calling thread's namespace took a retransmission timeout, read every
/// `every` until `stop` is set or `limit` has passed. Each time is when the poll saw it: at
/// most `every` (and the scheduler) after the timeout.
pub fn watch_tcp_timeouts(
    stop: &AtomicBool,
    every: Duration,
    limit: Duration,
) -> Result<Vec<Instant>> {
    let deadline = Instant::now() + limit;
    let mut seen = tcp_timeouts()?;
    let mut fired = Vec::new();
    while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
        std::thread::sleep(every);
        let now = tcp_timeouts()?;
        let at = Instant::now();
        fired.extend((seen..now).map(|_| at));
        seen = now;
    }
    Ok(fired)
}

/// `name` in `group` of a `/proc/net/netstat` text: a line of names, then a line of values,
/// both starting with `group:`.
fn counter(text: &str, group: &str, name: &str) -> Option<u64> {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter_map(|l| l.strip_prefix(prefix.as_str()));
    let (names, values) = (lines.next()?, lines.next()?);
    let at = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(at)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::counter;

    const NETSTAT: &str = "TcpExt: SyncookiesSent TCPTimeouts TCPLossProbes\n\
                           TcpExt: 0 3 2\n\
                           IpExt: InNoRoutes TCPTimeouts\n\
                           IpExt: 7 9\n";

    #[test]
    fn a_counter_is_read_from_its_own_group() {
        assert_eq!(counter(NETSTAT, "TcpExt", "TCPTimeouts"), Some(3));
        assert_eq!(counter(NETSTAT, "TcpExt", "TCPLossProbes"), Some(2));
        assert_eq!(counter(NETSTAT, "IpExt", "TCPTimeouts"), Some(9));
    }

    #[test]
    fn a_missing_or_garbled_counter_is_none() {
        assert_eq!(counter(NETSTAT, "TcpExt", "TCPNope"), None);
        assert_eq!(counter(NETSTAT, "MPTcpExt", "TCPTimeouts"), None);
        assert_eq!(
            counter("TcpExt: TCPTimeouts\n", "TcpExt", "TCPTimeouts"),
            None
        );
        assert_eq!(
            counter("TcpExt: TCPTimeouts\nTcpExt: x\n", "TcpExt", "TCPTimeouts"),
            None
        );
    }
}
