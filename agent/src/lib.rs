//! The vfailover agent: the daemon's pieces, and the namespace lab.

pub mod lab;
