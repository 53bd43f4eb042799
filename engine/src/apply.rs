//! Applying etcd requests to the MVCC store.
