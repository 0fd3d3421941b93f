//! Frames the stack inspects or builds itself, outside smoltcp.
//!
//! [`check`] rejects malformed frames before they reach smoltcp so they can
//! be counted; [`announce`] builds the frames that tell an L2 network where a
//! MAC and its addresses live after a migration.

pub mod announce;
pub mod check;
