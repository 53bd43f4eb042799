//! The versions keel reports where etcd reports its own.

/// The etcd server version keel reports (Maintenance.Status, `/version`, the
/// `etcd_server_version` metric): the etcd release whose wire behaviour keel is tested
/// against, etcd 3.4.23.
pub const ETCD_VERSION: &str = "3.4.23";
