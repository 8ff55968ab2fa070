//! Which process owns a run: an advisory file lock per run, held while a process executes it.
//!
//! The kernel drops the lock when the process dies (kill -9, reboot), so "status says running
//! but nobody holds the lock" means the run was interrupted, and `resume` may take it over.
//! The lock also keeps two processes from resuming the same run at once.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

pub struct RunLease {
    _file: Option<File>,
    /// A shared store's lease (PostgreSQL): given back when dropped.
    _held: Option<Box<dyn Send + Sync>>,
}

impl std::fmt::Debug for RunLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunLease").finish_non_exhaustive()
    }
}

impl RunLease {
    /// A lease that guards nothing (in-memory stores live in one process).
    pub fn none() -> Self {
        RunLease {
            _file: None,
            _held: None,
        }
    }

    /// A lease kept by `guard`, which gives it back when dropped.
    pub(crate) fn held(guard: Box<dyn Send + Sync>) -> Self {
        RunLease {
            _file: None,
            _held: Some(guard),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RunLocks {
    dir: PathBuf,
}

fn lock_file_name(run_id: &str) -> String {
    // Run ids are validated, but never let one name a path outside the directory.
    let safe: String = run_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.lock")
}

impl RunLocks {
    pub(crate) fn new(dir: impl Into<PathBuf>) -> Self {
        RunLocks { dir: dir.into() }
    }

    /// The lock directory that belongs to a state file: `state.redb` → `state.redb.locks/`.
    pub(crate) fn beside(db: &Path) -> Self {
        let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(".locks");
        RunLocks::new(db.with_file_name(name))
    }

    /// Takes the run's lock, or `None` if another live process holds it.
    pub(crate) fn try_acquire(&self, run_id: &str) -> std::io::Result<Option<RunLease>> {
        std::fs::create_dir_all(&self.dir)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(lock_file_name(run_id)))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(RunLease {
                _held: None,
                _file: Some(file),
            })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// Whether some live process holds the run's lock.
    pub(crate) fn is_held(&self, run_id: &str) -> bool {
        let path = self.dir.join(lock_file_name(run_id));
        let Ok(file) = OpenOptions::new().read(true).open(path) else {
            return false;
        };
        matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let locks = RunLocks::new(dir.path());
        let lease = locks.try_acquire("r1").unwrap().unwrap();
        assert!(locks.is_held("r1"));
        assert!(locks.try_acquire("r1").unwrap().is_none());
        assert!(!locks.is_held("r2"));
        drop(lease);
        assert!(!locks.is_held("r1"));
        assert!(locks.try_acquire("r1").unwrap().is_some());
    }

    #[test]
    fn odd_run_ids_stay_inside_the_directory() {
        assert_eq!(lock_file_name("../../etc/passwd"), "______etc_passwd.lock");
    }
}
