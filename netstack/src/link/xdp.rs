//! AF_XDP link (placeholder, being written).
