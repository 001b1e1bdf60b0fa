//! `sockgate run --watch`: reload when the config or an included file changes.
//!
//! It watches directories, not files. A Kubernetes ConfigMap mount updates by swapping a
//! `..data` symlink: `sockgate.toml -> ..data/sockgate.toml` itself never changes, so a
//! watch on the file would never fire (kubernetes/kubernetes#112677). Any change in a
//! watched directory counts, and a burst of them (an editor's save, a symlink swap) is
//! one reload once the directory has been quiet for [`QUIET`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use ::notify::{
    EventKind, RecommendedWatcher, RecursiveMode, Watcher as _,
    event::{AccessKind, AccessMode},
};
use tokio::sync::mpsc;

/// How long a directory must stay quiet before a burst of changes becomes a reload.
pub const QUIET: Duration = Duration::from_millis(250);
/// The longest a steady stream of changes delays a reload.
const MAX_DELAY: Duration = Duration::from_secs(2);

/// Why the watch could not start.
#[derive(Debug, thiserror::Error)]
#[error("watching {dir}: {source}")]
pub struct WatchError {
    /// The directory.
    dir: String,
    /// What inotify said.
    source: ::notify::Error,
}

/// The directories of a config and its includes, watched.
pub struct Watch {
    watcher: RecommendedWatcher,
    dirs: Vec<PathBuf>,
    changes: mpsc::UnboundedReceiver<()>,
}

impl Watch {
    /// Starts watching the directory of `path` and those its `include` globs read from.
    pub fn start(path: &Path, include: &[String]) -> Result<Watch, WatchError> {
        let (tx, changes) = mpsc::unbounded_channel();
        let watcher =
            ::notify::recommended_watcher(move |event: ::notify::Result<::notify::Event>| {
                // Our own reads (open, close without writing) are no change.
                let change = match event {
                    Ok(e) => match e.kind {
                        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                        EventKind::Access(_) => false,
                        _ => true,
                    },
                    // An overflowed queue may have hidden a change.
                    Err(_) => true,
                };
                if change {
                    let _ = tx.send(());
                }
            })
            .map_err(|source| WatchError {
                dir: path.display().to_string(),
                source,
            })?;
        let mut watch = Watch {
            watcher,
            dirs: Vec::new(),
            changes,
        };
        let dir = config_dir(path);
        watch
            .watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError {
                dir: dir.display().to_string(),
                source,
            })?;
        watch.dirs.push(dir);
        watch.follow(path, include);
        Ok(watch)
    }

    /// Watches the directories `include` reads from too, after a reload that may have
    /// changed it. One that does not exist yet is skipped with a warning.
    pub fn follow(&mut self, path: &Path, include: &[String]) {
        for dir in include_dirs(&config_dir(path), include) {
            if self.dirs.contains(&dir) {
                continue;
            }
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => self.dirs.push(dir),
                Err(err) => log::warn!("watch: {}: {err}", dir.display()),
            }
        }
    }

    /// Waits for a change, then for the burst it starts to end.
    pub async fn changed(&mut self) {
        if self.changes.recv().await.is_none() {
            // The watcher's thread is gone: no change will ever come.
            std::future::pending::<()>().await;
        }
        let deadline = tokio::time::Instant::now() + MAX_DELAY;
        while let Ok(Some(())) = tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + QUIET),
            self.changes.recv(),
        )
        .await
        {}
    }
}

/// Waits for `watch`'s next change, or forever without one.
pub async fn changed(watch: &mut Option<Watch>) {
    match watch {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

fn config_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// The literal directory in front of each glob: `policy.d/*.toml` reads from `policy.d`.
fn include_dirs(base: &Path, include: &[String]) -> Vec<PathBuf> {
    include
        .iter()
        .map(|pattern| {
            let literal: PathBuf = Path::new(pattern)
                .components()
                .take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '[']))
                .collect();
            // A pattern without a glob names a file: watch its directory.
            let literal = if literal.as_os_str().len() == pattern.len() {
                literal.parent().map(Path::to_owned).unwrap_or_default()
            } else {
                literal
            };
            base.join(literal)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_include_is_watched_at_its_literal_directory() {
        let dirs = include_dirs(
            Path::new("/etc/sockgate"),
            &[
                "policy.d/*.toml".into(),
                "teams/web/rules.toml".into(),
                "/abs/**/x.toml".into(),
            ],
        );
        assert_eq!(
            dirs,
            [
                PathBuf::from("/etc/sockgate/policy.d"),
                PathBuf::from("/etc/sockgate/teams/web"),
                PathBuf::from("/abs"),
            ]
        );
    }

    #[tokio::test]
    async fn a_symlink_swap_is_one_change() {
        let dir = std::env::temp_dir().join(format!("sockgate-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("..x")).unwrap();
        std::fs::write(dir.join("..x/sockgate.toml"), "").unwrap();
        std::os::unix::fs::symlink("..x", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/sockgate.toml", dir.join("sockgate.toml")).unwrap();
        let mut watch = Watch::start(&dir.join("sockgate.toml"), &[]).unwrap();
        std::fs::create_dir_all(dir.join("..y")).unwrap();
        std::fs::write(dir.join("..y/sockgate.toml"), "# new").unwrap();
        std::os::unix::fs::symlink("..y", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("the swap is seen");
        // The burst was one change: nothing more is pending.
        assert!(
            tokio::time::timeout(QUIET * 2, watch.changed())
                .await
                .is_err(),
            "a second change"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
