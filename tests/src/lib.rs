//! Helpers for Kith's integration tests: real mounts, real daemons, real stores.
