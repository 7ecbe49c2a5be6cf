//! One writer per store. The process that holds the exclusive flock on `v1/lock` is the
//! only one that writes the store: the daemon while it runs, else the operator command
//! that opened it (import, gc, verify, an in-process prefetch). The holder writes its PID
//! there and, for a daemon with an admin listener, that listener's address: a command
//! that finds the store taken sends its work to the daemon's admin API instead, so the
//! daemon's index, budget and in-memory records always see every change as it happens.
//! Commands that only read (export, stats) open the store without the lock.
//!
//! ```text
//! v1/lock:  <pid>\n[admin <address>\n]
//! ```

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Who holds a store's lock, as it wrote there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    /// The daemon's admin listener, where operator commands go while it runs.
    pub admin: Option<SocketAddr>,
}

/// The error inside `Store::open`'s `WouldBlock` when another process writes the store.
#[derive(Debug)]
pub struct Taken {
    pub dir: PathBuf,
    pub lock: PathBuf,
    pub owner: Owner,
}

impl fmt::Display for Taken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is in use by another regcache process (process {} holds {}); \
             give each daemon its own cache.dir, or stop the other one",
            self.dir.display(),
            self.owner.pid,
            self.lock.display()
        )
    }
}

impl std::error::Error for Taken {}

/// The owner named by an error from `Store::open`, when that is why it failed.
pub fn taken(e: &io::Error) -> Option<&Taken> {
    e.get_ref()?.downcast_ref::<Taken>()
}

/// Takes the store's lock and writes this process's PID there. Fails at once (never
/// waits) when another process holds it.
pub(super) fn lock(root: &Path, dir: &Path) -> io::Result<File> {
    use rustix::fs::{flock, FlockOperation};
    let path = root.join("lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    if let Err(e) = flock(&file, FlockOperation::NonBlockingLockExclusive) {
        if e != rustix::io::Errno::WOULDBLOCK {
            return Err(e.into());
        }
        let owner = parse(&fs::read_to_string(&path).unwrap_or_default());
        let taken = Taken {
            dir: dir.to_path_buf(),
            lock: path,
            owner,
        };
        return Err(io::Error::new(io::ErrorKind::WouldBlock, taken));
    }
    write(&file, &format!("{}\n", std::process::id()))?;
    Ok(file)
}

/// Adds the admin listener's address to the lock this process holds.
pub(super) fn announce(lock: &File, addr: SocketAddr) -> io::Result<()> {
    write(lock, &format!("{}\nadmin {addr}\n", std::process::id()))
}

fn write(file: &File, text: &str) -> io::Result<()> {
    file.set_len(0)?;
    file.write_all_at(text.as_bytes(), 0)
}

/// Reads what a holder wrote; a holder that wrote nothing yet is PID 0 with no admin.
fn parse(text: &str) -> Owner {
    let mut lines = text.lines();
    let pid = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    let admin = lines
        .filter_map(|l| l.strip_prefix("admin "))
        .find_map(|a| a.trim().parse().ok());
    Owner { pid, admin }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_text_names_the_pid_and_the_admin_listener() {
        assert_eq!(
            parse("42\nadmin [::1]:9091\n"),
            Owner {
                pid: 42,
                admin: Some("[::1]:9091".parse().unwrap())
            }
        );
        assert_eq!(
            parse("7\n"),
            Owner {
                pid: 7,
                admin: None
            }
        );
        assert_eq!(
            parse(""),
            Owner {
                pid: 0,
                admin: None
            }
        );
    }
}
