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
    use futures_util::StreamExt;
    use inotify::{Inotify, WatchMask};
    let inotify = Inotify::init().unwrap();
    inotify
        .watches()
        .add(
            path.parent().unwrap(),
            WatchMask::CREATE | WatchMask::MODIFY,
        )
        .unwrap();
    let mut changed = inotify.into_event_stream([0; 1024]).unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let lines = read_lines(path);
        if lines.len() >= n {
            return lines;
        }
        let event = tokio::time::timeout_at(deadline, changed.next()).await;
        assert!(
            event.is_ok(),
            "{} of {n} lines in {}: {lines:?}",
            lines.len(),
            path.display()
        );
    }
}
