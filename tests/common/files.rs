//! The lines of a file corral writes (an access log), read now or waited
//! for.

use std::path::Path;

use super::patience::PATIENCE;

/// The lines of the file at `path` (none while it does not exist).
pub fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits until `path` has `n` lines, looking again whenever its folder
/// changes (workers write their lines off the request path).
pub async fn wait_for_lines(path: &Path, n: usize) -> Vec<String> {
    use notify::Watcher;
    let (changed_tx, mut changed) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |_| {
        let _ = changed_tx.send(());
    })
    .unwrap();
    watcher
        .watch(path.parent().unwrap(), notify::RecursiveMode::NonRecursive)
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let lines = read_lines(path);
        if lines.len() >= n {
            return lines;
        }
        let event = tokio::time::timeout_at(deadline, changed.recv()).await;
        assert!(
            event.is_ok(),
            "{} of {n} lines in {}: {lines:?}",
            lines.len(),
            path.display()
        );
    }
}
