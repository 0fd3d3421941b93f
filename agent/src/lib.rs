//! The vfailover agent: the daemon's pieces, the namespace lab and the
//! scripted failover run over it.

pub mod lab;
pub mod scenario;
