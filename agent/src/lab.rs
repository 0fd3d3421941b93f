//! The namespace lab (placeholder, being written).
