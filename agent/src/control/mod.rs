//! The control socket: a Unix socket server run by the daemon, and the
//! client behind `vfailover status`, `metrics`, `announce` and `reload`.
//!
//! # Protocol
//!
//! `SOCK_STREAM` Unix socket, by default `/run/vfailover/vfailover.sock`,
//! mode 0660, group `vfailover`. One exchange per connection:
//!
//! 1. the client sends one JSON object on one line (at most
//!    [`MAX_REQUEST`] bytes before the `\n`; EOF instead of the `\n` also
//!    ends the request);
//! 2. the server answers with one JSON object on one line and closes.
//!
//! Requests ([`Request`]):
//!
//! ```text
//! {"command":"status"}
//! {"command":"metrics"}
//! {"command":"announce"}                  all pairs
//! {"command":"announce","pair":"main"}    one pair
//! {"command":"reload"}
//! ```
//!
//! Responses ([`Response`]):
//!
//! ```text
//! {"ok":true,"status":{...}}              see crate::status::Status
//! {"ok":true,"metrics":"# HELP ..."}      Prometheus text
//! {"ok":true,"announced":["main"]}
//! {"ok":true,"reloaded":true}
//! {"ok":false,"error":"..."}
//! ```
//!
//! Who may do what: anyone who can connect (root and the socket's group)
//! may read; `announce` and `reload` change things and need uid 0, taken
//! from `SO_PEERCRED`, not from anything the client says. The server
//! refuses others itself, so the daemon never sees those requests.
//!
//! Bounds, so that no client can wedge the daemon: the request line must
//! arrive within [`IO_TIMEOUT`] (a slowloris or half-open client is
//! dropped), the answer must be taken within [`IO_TIMEOUT`] (a client that
//! never reads cannot block a thread for ever), the daemon must answer
//! within [`REPLY_TIMEOUT`] ("daemon busy" otherwise), and at most
//! [`MAX_CLIENTS`] connections are served at once. When all are taken, a
//! new client takes the place of the oldest one that has said nothing for
//! [`SILENT_EVICT`] (which is told why and closed), so that idle
//! connections cannot lock `status` out; when none is that silent, the new
//! client gets `{"ok":false,"error":"busy"}` at once.
//!
//! Threads: one accepts (in `poll`, with a socketpair to wake it for
//! shutdown), one per connection. Requests reach the daemon's main loop as
//! [`ControlCall`]s over an mpsc channel, with a waker so that a loop asleep
//! in epoll hears of them.

mod client;
mod protocol;
mod server;

pub use client::request;
pub use protocol::{parse_request, Request, Response, MAX_REQUEST};
pub use server::{
    ControlCall, ControlServer, Peer, IO_TIMEOUT, MAX_CLIENTS, REPLY_TIMEOUT, SILENT_EVICT,
};
