//! `keelutl defrag --data-dir DIR`.

use std::path::Path;

/// Rewrites the stopped member in `data_dir` compactly.
pub fn defrag(data_dir: &Path) -> anyhow::Result<()> {
    anyhow::bail!("defrag of {} is not implemented yet", data_dir.display())
}
