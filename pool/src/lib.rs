//! Shared-memory packet pool.
