//! Watching the config file, and the certificate files it names, for
//! changes.
//!
//! inotify watches each file's folder (and, when the path is a symlink, the
//! folder of what it points to), so all the ways a file changes are seen: an
//! edit in place, an editor's write-and-rename, and a Kubernetes ConfigMap
//! update, where the file is a symlink through `..data` and kubelet swaps
//! `..data` to a new folder atomically (a Secret's certificate, or a
//! certbot renewal that points `live/` at new files, the same way). Events
//! only say "something may have changed"; the master waits for a burst to
//! settle and reloads only if the config's text, or a certificate's
//! contents, differ from what it last read. Reads are not changes: the
//! master's own read of the file must not wake it again, and nor must the
//! folder's other files: a log written beside the config would otherwise
//! wake the master at every line.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use inotify::{EventMask, EventStream, Inotify, WatchDescriptor, WatchMask};

/// How long a burst of events must stay quiet before the file is read.
pub const SETTLE: Duration = Duration::from_millis(200);

/// What can change a file's text or what its name points to. Not `MODIFY`:
/// a writer closes the file when done (`CLOSE_WRITE`), and a log appended
/// beside the config would otherwise raise an event at every write.
const MASK: WatchMask = WatchMask::CLOSE_WRITE
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::CREATE)
    .union(WatchMask::DELETE)
    .union(WatchMask::ATTRIB);

/// A watch on the folders of some files.
pub struct Watch {
    events: EventStream<[u8; 4096]>,
    /// By watched folder, the entry names that matter there.
    names: HashMap<WatchDescriptor, HashSet<OsString>>,
}

impl Watch {
    pub fn start(files: &[PathBuf]) -> std::io::Result<Self> {
        let inotify = Inotify::init()?;
        let mut watched: HashMap<WatchDescriptor, HashSet<OsString>> = HashMap::new();
        for file in files {
            let names = names(file);
            for folder in folders(file) {
                // A folder watched twice keeps one descriptor.
                let wd = inotify.watches().add(&folder, MASK)?;
                watched.entry(wd).or_default().extend(names.iter().cloned());
            }
        }
        Ok(Self {
            events: inotify.into_event_stream([0; 4096])?,
            names: watched,
        })
    }

    /// [`start`](Self::start), or `None` having said why not.
    pub fn logged(files: &[PathBuf]) -> Option<Self> {
        Self::start(files)
            .inspect_err(|e| tracing::warn!(error = %e, files = ?files, "cannot watch the config and certificate files; reload with SIGHUP or POST /reload"))
            .ok()
    }

    /// Waits for an event that may have changed what the file reads as.
    /// After a failure to read events it waits forever, having said so.
    pub async fn changed(&mut self) {
        while let Some(event) = self.events.next().await {
            match event {
                // An overflow lost events, which may have been ours.
                Ok(e) if e.mask.contains(EventMask::Q_OVERFLOW) => return,
                Ok(e)
                    if e.name.as_ref().is_some_and(|n| {
                        self.names.get(&e.wd).is_some_and(|names| names.contains(n))
                    }) =>
                {
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "file watch failed; reload with SIGHUP or POST /reload");
                    break;
                }
            }
        }
        std::future::pending().await
    }
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

/// The entry names whose change can change what `path` reads as: its own,
/// and those of the symlinks a lookup of it passes through (a ConfigMap's
/// `..data`). Names stay valid across a swap: kubelet renames a new link
/// onto `..data`, and an editor writes the file's own name.
fn names(path: &Path) -> HashSet<OsString> {
    let mut names = HashSet::new();
    let mut at = path.to_path_buf();
    // The bound is the kernel's own limit on links in one lookup.
    for _ in 0..40 {
        names.extend(at.file_name().map(OsString::from));
        for folder in at.ancestors().skip(1) {
            if folder.is_symlink() {
                names.extend(folder.file_name().map(OsString::from));
            }
        }
        match std::fs::read_link(&at) {
            // A relative target is relative to the link's folder; `join`
            // takes an absolute one as it is.
            Ok(target) => at = at.parent().unwrap_or(Path::new("")).join(target),
            Err(_) => break,
        }
    }
    names
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn set(names: &[&str]) -> HashSet<OsString> {
        names.iter().map(OsString::from).collect()
    }

    #[test]
    fn a_plain_file_is_known_by_its_own_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corral.toml");
        std::fs::write(&path, "").unwrap();
        assert_eq!(names(&path), set(&["corral.toml"]));
        // Before the file exists, and given relative to the working folder.
        assert_eq!(names(&dir.path().join("new.toml")), set(&["new.toml"]));
        assert_eq!(names(Path::new("corral.toml")), set(&["corral.toml"]));
    }

    #[test]
    fn a_configmap_is_known_by_the_file_and_the_links_on_its_way() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("..2026_12_03")).unwrap();
        std::fs::write(root.join("..2026_12_03/corral.toml"), "").unwrap();
        symlink("..2026_12_03", root.join("..data")).unwrap();
        symlink("..data/corral.toml", root.join("corral.toml")).unwrap();
        assert_eq!(
            names(&root.join("corral.toml")),
            set(&["corral.toml", "..data"])
        );
    }

    #[test]
    fn a_link_to_a_differently_named_file_adds_that_name() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("prod.toml"), "").unwrap();
        symlink(root.join("prod.toml"), root.join("corral.toml")).unwrap();
        assert_eq!(
            names(&root.join("corral.toml")),
            set(&["corral.toml", "prod.toml"])
        );
    }
}
