//! Errors with etcd texts.
