//! Temporary paths beside their final place: a staged file or directory is renamed into place
//! only once verified, and removed on every other way out, including leftovers of killed runs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A temporary file or directory, removed when dropped unless `keep` is set.
pub(crate) struct TempPath {
    path: PathBuf,
    pub(crate) keep: bool,
}

impl TempPath {
    /// A fresh, unused name `DIR/PREFIX.tmp-PID-N` (nothing is created).
    pub(crate) fn new(dir: &Path, prefix: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        Self {
            path: dir.join(format!("{prefix}.tmp-{pid}-{n}")),
            keep: false,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let result = if self.path.is_dir() {
            std::fs::remove_dir_all(&self.path)
        } else {
            std::fs::remove_file(&self.path)
        };
        if let Err(e) = result
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Removes `DIR/PREFIX.tmp-PID-N` (and `PREFIX.old.tmp-PID-N`) left by processes that no longer
/// run. Only where `/proc` tells which do (Linux); elsewhere leftovers stay (hidden names, never
/// loaded).
pub(crate) fn sweep_stale(dir: &Path, prefix: &str) {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return;
    }
    let Ok(items) = std::fs::read_dir(dir) else {
        return;
    };
    let own = std::process::id();
    for item in items.flatten() {
        let name = item.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let rest = rest.strip_prefix(".old").unwrap_or(rest);
        let pid = rest
            .strip_prefix(".tmp-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        match pid {
            Some(pid) if pid != own && !proc.join(pid.to_string()).exists() => {
                tracing::info!(
                    "removing {} left by an interrupted pull",
                    item.path().display()
                );
                drop(TempPath {
                    path: item.path(),
                    keep: false,
                });
            }
            _ => {}
        }
    }
}
