//! Tools around the daemon, not part of it: the namespace lab, the scripted
//! failover run and its report, the benchmarks, the traffic scenarios and
//! packet capture. They drive the daemon through its control socket and
//! use its types; the daemon's own modules never use them.

pub mod bench;
pub mod capture;
pub mod lab;
pub mod lab_run;
pub mod scenario;
