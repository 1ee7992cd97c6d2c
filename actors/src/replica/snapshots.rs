//! The snapshot files one replica is responsible for: those that arrived and wait for raft-rs,
//! those being streamed to followers, and the install that raft-rs has yet to count.
//!
//! Files are large; each is kept exactly as long as someone may still read it, and removed as
//! soon as no one will.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use shardkv_transport::HostId;
use tracing::warn;

/// A snapshot's place in the log: (index, term).
pub type SnapshotPoint = (u64, u64);

/// See the module docs.
#[derive(Debug, Default)]
pub struct SnapshotFiles {
    /// Files that arrived, by point, waiting for raft-rs to ask for their install.
    incoming: HashMap<SnapshotPoint, PathBuf>,
    /// Files being streamed, by follower (kept until it reports).
    outgoing: HashMap<HostId, PathBuf>,
    /// A snapshot installed in the Ready numbered `.0`, at index `.1`: once raft-rs counts
    /// that Ready as persisted, it must also count the snapshot as applied.
    installed: Option<(u64, u64)>,
}

impl SnapshotFiles {
    /// A file for `point` arrived. Only the newest arrival per point is kept.
    pub fn arrived(&mut self, point: SnapshotPoint, path: PathBuf) {
        if let Some(old) = self.incoming.insert(point, path) {
            remove_file(&old);
        }
    }

    /// raft-rs now wants `wanted` installed (if anything): every other arrival was refused
    /// (stale, or from a deposed leader) or superseded and will never be asked for.
    pub fn keep_only(&mut self, wanted: Option<SnapshotPoint>) {
        self.incoming.retain(|point, path| {
            let keep = Some(*point) == wanted;
            if !keep {
                remove_file(path);
            }
            keep
        });
    }

    /// The file to install for `point`; the caller owns it from here.
    pub fn take_incoming(&mut self, point: SnapshotPoint) -> Option<PathBuf> {
        self.incoming.remove(&point)
    }

    /// `path` is being streamed to `to`.
    pub fn sending(&mut self, to: HostId, path: PathBuf) {
        self.outgoing.insert(to, path);
    }

    /// `to` reported on its snapshot; returns the files still being streamed to others.
    pub fn delivered(&mut self, to: HostId) -> Vec<&Path> {
        self.outgoing.remove(&to);
        self.outgoing.values().map(PathBuf::as_path).collect()
    }

    /// A snapshot at `index` was installed by the Ready numbered `ready`.
    pub fn installed(&mut self, ready: u64, index: u64) {
        self.installed = Some((ready, index));
    }

    /// Ready `ready` (and all before it) is persisted: the index an installed snapshot now
    /// lets raft-rs count as applied, once.
    pub fn persisted(&mut self, ready: u64) -> Option<u64> {
        match self.installed {
            Some((n, index)) if n <= ready => {
                self.installed = None;
                Some(index)
            }
            _ => None,
        }
    }
}

fn remove_file(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        warn!(path = %path.display(), error = %e, "cannot remove snapshot file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, name).expect("write a file in a temp dir");
        path
    }

    #[test]
    fn only_the_newest_arrival_per_point_is_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut files = SnapshotFiles::default();
        let old = file(dir.path(), "old");
        let new = file(dir.path(), "new");
        files.arrived((10, 2), old.clone());
        files.arrived((10, 2), new.clone());
        assert!(!old.exists());
        assert_eq!(files.take_incoming((10, 2)), Some(new.clone()));
        assert!(new.exists(), "the taker owns the file");
        assert_eq!(files.take_incoming((10, 2)), None);
    }

    #[test]
    fn arrivals_raft_does_not_want_are_removed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut files = SnapshotFiles::default();
        let stale = file(dir.path(), "stale");
        let wanted = file(dir.path(), "wanted");
        files.arrived((5, 1), stale.clone());
        files.arrived((10, 2), wanted.clone());
        files.keep_only(Some((10, 2)));
        assert!(!stale.exists());
        assert!(wanted.exists());
        files.keep_only(None);
        assert!(!wanted.exists(), "refused: nobody will ask for it");
    }

    #[test]
    fn outgoing_files_stay_in_use_until_their_follower_reports() {
        let mut files = SnapshotFiles::default();
        files.sending(2, PathBuf::from("a"));
        files.sending(3, PathBuf::from("b"));
        assert_eq!(files.delivered(2), [Path::new("b")]);
        assert!(files.delivered(3).is_empty());
    }

    #[test]
    fn an_install_counts_as_applied_once_its_ready_is_persisted() {
        let mut files = SnapshotFiles::default();
        files.installed(7, 100);
        assert_eq!(files.persisted(6), None);
        assert_eq!(files.persisted(8), Some(100));
        assert_eq!(files.persisted(9), None, "counted once");
    }
}
