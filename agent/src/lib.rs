//! The vfailover agent: the daemon's pieces, the namespace lab and the
//! scripted failover run over it.

#![deny(unsafe_code)]

pub mod backoff;
pub mod bench;
pub mod capture;
pub mod config;
pub mod control;
pub mod daemon;
pub mod discovery;
pub mod lab;
pub mod lab_run;
pub mod migration;
pub mod pairing;
pub mod scenario;
pub mod status;
#[allow(unsafe_code)]
mod sys;
