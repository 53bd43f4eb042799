//! Multi-version concurrency control, etcd style.
