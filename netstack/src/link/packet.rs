//! AF_PACKET link (placeholder, being written).
