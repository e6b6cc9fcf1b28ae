//! The state folder: an account per ACME directory, and each issued
//! certificate's chain and key, where the config loads them from (so a
//! restart serves them, and the file watch hands a new one to the workers
//! like any renewed certificate file). Files are written whole, then
//! renamed into place; keys are readable by their owner only.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use instant_acme::AccountCredentials;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::plan::CertifiedPem;

/// Where the account for `directory` is kept: a name made of the URL's
/// host and path, so one folder can hold accounts for several servers.
pub fn account_file(state_dir: &Path, directory: &str) -> PathBuf {
    let url = directory.trim_start_matches("https://");
    let name: String = url
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    state_dir.join("accounts").join(format!("{name}.json"))
}

pub fn load_account(path: &Path) -> Option<AccountCredentials> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text)
        .inspect_err(|e| tracing::warn!(file = %path.display(), error = %e, "unreadable ACME account; making a new one"))
        .ok()
}

pub fn save_account(path: &Path, credentials: &AccountCredentials) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(credentials).map_err(std::io::Error::other)?;
    write_private(path, &json)
}

/// Writes the issued chain and key to `cert` and `key`, where the config
/// loads them from: the key first, so that the chain's arrival (which
/// wakes the file watch) finds its key in place.
pub fn save_certificate(cert: &Path, key: &Path, pem: &CertifiedPem) -> std::io::Result<()> {
    write_private(key, pem.key.as_bytes())?;
    write_public(cert, pem.chain.as_bytes())
}

/// A master's claim on ordering one certificate, held until dropped.
pub type Lock = Flock<std::fs::File>;

/// The claim on ordering `cert` (an exclusive `flock` on `CERT.lock`
/// beside it, which the kernel drops with its holder, even a killed one);
/// `None` while another process holds it.
pub fn lock(cert: &Path) -> std::io::Result<Option<Lock>> {
    let mut name = cert.as_os_str().to_owned();
    name.push(".lock");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(PathBuf::from(name))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e.into()),
    }
}

/// Makes the folders the state lives in, so that the file watch can watch
/// the certificates' folder before anything is issued into it.
pub fn prepare(cert: &Path, key: &Path) -> std::io::Result<()> {
    for file in [cert, key] {
        if let Some(folder) = file.parent() {
            std::fs::create_dir_all(folder)?;
            std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write(path, bytes, 0o600)
}

fn write_public(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write(path, bytes, 0o644)
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over
/// `path`: a reader sees the old file or the new one, never half of one.
fn write(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let folder = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(folder)?;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".new");
    let temporary = PathBuf::from(temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_orders_a_certificate() {
        let dir = std::env::temp_dir().join(format!("corral-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("site.pem");
        // Each open file is its own holder, as another process's would be.
        let first = lock(&cert).unwrap().expect("free at first");
        assert!(lock(&cert).unwrap().is_none(), "held by the first");
        drop(first);
        assert!(lock(&cert).unwrap().is_some(), "free once dropped");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn accounts_are_named_by_directory() {
        let dir = Path::new("/state");
        assert_eq!(
            account_file(dir, "https://acme-v02.api.letsencrypt.org/directory"),
            Path::new("/state/accounts/acme-v02.api.letsencrypt.org_directory.json")
        );
        assert_eq!(
            account_file(dir, "https://127.0.0.1:14000/dir"),
            Path::new("/state/accounts/127.0.0.1_14000_dir.json")
        );
    }
}
