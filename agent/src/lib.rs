//! The vfailover agent: the daemon's modules, and in [`tools`] the
//! namespace lab and the scripted failover run over it.

#![deny(unsafe_code)]

pub mod backoff;
pub mod config;
pub mod control;
pub mod daemon;
pub mod discovery;
pub mod migration;
pub mod pairing;
pub mod status;
#[allow(unsafe_code)]
mod sys;
pub mod tools;

// The tools' paths from before they moved under `tools`: the binary, the
// tests and the tools themselves use them.
pub use tools::{bench, capture, lab, lab_run, scenario};
