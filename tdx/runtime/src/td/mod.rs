//! Trust Domains as the runtime manages them. For now only the lifecycle state machine; the
//! TD object (control pages, vCPUs, build and teardown jobs) is integrated on top of it.

pub mod lifecycle;
