//! The vfailover agent: the daemon's pieces, the namespace lab and the
//! scripted failover run over it.

pub mod discovery;
pub mod lab;
pub mod pairing;
pub mod scenario;
