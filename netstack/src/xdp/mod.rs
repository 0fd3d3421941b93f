//! XDP filter program and loader (placeholder, being written).
