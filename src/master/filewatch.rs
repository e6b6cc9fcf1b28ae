//! Watching the config file for changes.
//!
//! inotify watches the file's folder (and, when the path is a symlink, the
//! folder of what it points to), so all the ways a file changes are seen: an
//! edit in place, an editor's write-and-rename, and a Kubernetes ConfigMap
//! update, where the file is a symlink through `..data` and kubelet swaps
//! `..data` to a new folder atomically. Events only say "something may have
//! changed"; the master waits for a burst to settle and reloads only if the
//! file's text differs from what it last read. Reads are not changes: the
//! master's own read of the file must not wake it again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// How long a burst of events must stay quiet before the file is read.
pub const SETTLE: Duration = Duration::from_millis(200);

/// Starts watching; events arrive on the receiver until the watcher is dropped.
pub fn watch(path: &Path) -> notify::Result<(RecommendedWatcher, mpsc::UnboundedReceiver<()>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            // The receiver is gone only when the master is stopping.
            let _ = tx.send(());
        }
    })?;
    for folder in folders(path) {
        watcher.watch(&folder, RecursiveMode::NonRecursive)?;
    }
    Ok((watcher, rx))
}

/// The folders whose entries decide what `path` reads as.
fn folders(path: &Path) -> Vec<PathBuf> {
    let parent = |p: &Path| match p.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut out = vec![parent(path)];
    if let Ok(target) = std::fs::canonicalize(path) {
        let dir = parent(&target);
        if !out
            .iter()
            .any(|d| std::fs::canonicalize(d).ok().as_deref() == Some(dir.as_path()))
        {
            out.push(dir);
        }
    }
    out
}

/// Whether the file now reads differently from `last` (`None`: it could not
/// be read last time). A file that turns unreadable has changed, so the
/// reload reports why; one that stays unreadable has not.
pub fn changed(path: &Path, last: Option<&str>) -> bool {
    match std::fs::read_to_string(path) {
        Ok(text) => last != Some(text.as_str()),
        Err(_) => last.is_some(),
    }
}
