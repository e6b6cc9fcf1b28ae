//! The readiness notices corral sends its service manager (sd_notify(3)):
//! the socket a test listens on, and each notice parsed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use tokio::sync::watch;

use super::patience::PATIENCE;

/// One datagram corral sent to its `NOTIFY_SOCKET` (sd_notify(3)): its
/// `KEY=VALUE` lines, in order, and the pid of the process that sent it
/// (what systemd's `NotifyAccess=main` checks against the main pid).
#[derive(Debug, Clone)]
pub struct Notice {
    fields: Vec<(String, String)>,
    sender: u32,
}

impl Notice {
    fn parse(datagram: &[u8], sender: u32) -> Self {
        let text = String::from_utf8_lossy(datagram);
        let fields = text
            .lines()
            .map(|l| {
                let (key, value) = l.split_once('=').unwrap_or((l, ""));
                (key.to_owned(), value.to_owned())
            })
            .collect();
        Self { fields, sender }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn keys(&self) -> Vec<&str> {
        self.fields.iter().map(|(k, _)| k.as_str()).collect()
    }

    /// The pid of the process that sent it.
    pub fn sender(&self) -> u32 {
        self.sender
    }

    /// `WATCHDOG=1`: a keep-alive ping for the service manager's watchdog.
    pub fn is_watchdog(&self) -> bool {
        self.get("WATCHDOG") == Some("1")
    }

    /// `READY=1`: every worker slot serves (at startup, or as a reload ends).
    pub fn is_ready(&self) -> bool {
        self.get("READY") == Some("1")
    }

    pub fn is_reloading(&self) -> bool {
        self.get("RELOADING") == Some("1")
    }

    pub fn is_stopping(&self) -> bool {
        self.get("STOPPING") == Some("1")
    }

    pub fn main_pid(&self) -> Option<u32> {
        self.get("MAINPID")?.parse().ok()
    }

    pub fn generation(&self) -> Option<u64> {
        self.get("X_CORRAL_GENERATION")?.parse().ok()
    }

    /// `X_CORRAL_LISTENERS`: each listener's bound address by name.
    pub fn listeners(&self) -> HashMap<String, SocketAddr> {
        let value = self
            .get("X_CORRAL_LISTENERS")
            .unwrap_or_else(|| panic!("no X_CORRAL_LISTENERS in {self:?}"));
        value
            .split_whitespace()
            .map(|pair| {
                let (name, addr) = pair.split_once('=').unwrap();
                (name.to_owned(), addr.parse().unwrap())
            })
            .collect()
    }

    /// `X_CORRAL_ADMIN`: the admin endpoint's address, if there is one.
    pub fn admin(&self) -> Option<SocketAddr> {
        Some(self.get("X_CORRAL_ADMIN")?.parse().unwrap())
    }
}

/// The service manager's end of sd_notify(3): a datagram socket that
/// corral is pointed at with `NOTIFY_SOCKET`, and every notice it has
/// received so far (from every corral process that inherited the variable).
pub struct Notices {
    /// `NOTIFY_SOCKET`'s value for it.
    address: std::ffi::OsString,
    received: watch::Receiver<Vec<Notice>>,
    /// Shut down when dropped, which ends the receiving thread.
    socket: std::os::unix::net::UnixDatagram,
}

impl Notices {
    /// A socket at `path` (in the test's temp dir).
    pub fn bind(path: &Path) -> Self {
        let socket = std::os::unix::net::UnixDatagram::bind(path).unwrap();
        Self::receive(socket, path.as_os_str().to_owned())
    }

    /// A socket in the abstract namespace, `@name` in `NOTIFY_SOCKET`.
    pub fn bind_abstract(name: &str) -> Self {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
        let socket = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        Self::receive(socket, format!("@{name}").into())
    }

    /// A thread reads each datagram as it comes: corral sends without
    /// waiting, so a queue left unread would lose notices. With
    /// `SO_PASSCRED`, as systemd's socket has it, the kernel says who sent
    /// each.
    fn receive(socket: std::os::unix::net::UnixDatagram, address: std::ffi::OsString) -> Self {
        use nix::sys::socket::{setsockopt, sockopt::PassCred};
        setsockopt(&socket, PassCred, &true).unwrap();
        let reader = socket.try_clone().unwrap();
        let (notices, received) = watch::channel(Vec::new());
        std::thread::spawn(move || {
            let mut buf = vec![0; 64 * 1024];
            // 0 bytes: shut down (corral never sends an empty datagram).
            while let Some((n @ 1.., sender)) = receive_one(&reader, &mut buf) {
                let notice = Notice::parse(&buf[..n], sender);
                eprintln!("[notify] {notice:?}");
                notices.send_modify(|all| all.push(notice));
            }
        });
        Self {
            address,
            received,
            socket,
        }
    }

    /// The value to give corral as `NOTIFY_SOCKET`.
    pub fn address(&self) -> &std::ffi::OsStr {
        &self.address
    }

    /// Every notice received so far.
    pub fn all(&self) -> Vec<Notice> {
        self.received.borrow().clone()
    }

    /// Waits until `n` notices satisfy `matches` (seen before or after
    /// now) and returns them; `what` names them if they do not come.
    pub async fn wait_for(
        &self,
        what: &str,
        n: usize,
        matches: impl Fn(&Notice) -> bool,
    ) -> Vec<Notice> {
        let mut received = self.received.clone();
        let enough = |all: &Vec<Notice>| all.iter().filter(|m| matches(m)).count() >= n;
        match tokio::time::timeout(PATIENCE, received.wait_for(enough)).await {
            Ok(Ok(all)) => all.iter().filter(|m| matches(m)).cloned().collect(),
            _ => panic!(
                "fewer than {n} notices {what}; received: {:#?}",
                self.received.borrow()
            ),
        }
    }

    /// The first `READY=1` of generation `generation`.
    pub async fn wait_ready(&self, generation: u64) -> Notice {
        let what = format!("READY=1 of generation {generation}");
        let ready = |m: &Notice| m.is_ready() && m.generation() == Some(generation);
        self.wait_for(&what, 1, ready).await.remove(0)
    }

    /// The first `n` `READY=1` notices: startup is the first, and the end
    /// of each reload, applied or not, one more.
    pub async fn wait_readies(&self, n: usize) -> Vec<Notice> {
        self.wait_for("READY=1", n, Notice::is_ready).await
    }
}

/// One datagram into `buf`: its length and its sender's pid; `None` once
/// the socket fails (it was shut down).
fn receive_one(socket: &std::os::unix::net::UnixDatagram, buf: &mut [u8]) -> Option<(usize, u32)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg};
    use std::os::fd::AsRawFd;
    let mut space = nix::cmsg_space!(UnixCredentials);
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let message = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    let sender = message.cmsgs().ok()?.find_map(|c| match c {
        ControlMessageOwned::ScmCredentials(creds) => u32::try_from(creds.pid()).ok(),
        _ => None,
    });
    Some((message.bytes, sender.unwrap_or(0)))
}

impl Drop for Notices {
    fn drop(&mut self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Read);
    }
}
