//! `kith verify`: read back everything the volume can reach.
//!
//! The walk goes through the same `Volume` calls the FUSE adapter uses, so it checks
//! what a user would see: every directory lists, every symlink reads, every byte of
//! every file (snapshots included) comes back from venti, where each block is checked
//! against its address and opened with its key on the way. A file that fails is
//! reported by path and the walk goes on; the number of reported paths is bounded.

use std::collections::HashSet;
use std::path::PathBuf;

use fossil::{FileKind, InodeNo, Volume};

/// Bytes asked for per read while verifying file contents.
const READ_BYTES: u32 = 1 << 20;
/// Problems listed by path; more are only counted.
const PROBLEMS_LISTED_MAX: usize = 100;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub dirs: u64,
    pub files: u64,
    pub symlinks: u64,
    pub others: u64,
    pub bytes: u64,
    pub problem_count: usize,
    pub problems: Vec<String>,
}

impl Report {
    fn problem(&mut self, path: &std::path::Path, what: impl std::fmt::Display) {
        self.problem_count += 1;
        if self.problems.len() < PROBLEMS_LISTED_MAX {
            self.problems.push(format!("/{}: {what}", path.display()));
        }
    }

    /// Human-readable lines; the last line starts with `problems: N`.
    pub fn render(&self) -> String {
        let mut text = format!(
            "checked {} directories, {} files ({} bytes), {} symlinks, {} other nodes\n",
            self.dirs, self.files, self.bytes, self.symlinks, self.others
        );
        for problem in &self.problems {
            text.push_str(&format!("  {problem}\n"));
        }
        if self.problem_count > self.problems.len() {
            text.push_str(&format!(
                "  … and {} more\n",
                self.problem_count - self.problems.len()
            ));
        }
        text.push_str(&format!("problems: {}\n", self.problem_count));
        text
    }
}

/// The problem count from a rendered report (`None` if it is not one).
pub fn problems_in(rendered: &str) -> Option<usize> {
    rendered
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("problems: "))
        .and_then(|n| n.trim().parse().ok())
}

pub fn verify(volume: &Volume) -> Report {
    let mut report = Report::default();
    let mut seen_dirs = HashSet::from([InodeNo::ROOT]);
    let mut seen_files = HashSet::new();
    let mut pending = vec![(InodeNo::ROOT, PathBuf::new())];
    while let Some((dir, dir_path)) = pending.pop() {
        report.dirs += 1;
        let mut cookie = 0;
        loop {
            let entries = match volume.readdir(dir, cookie) {
                Ok(entries) => entries,
                Err(error) => {
                    report.problem(&dir_path, format!("cannot list: {error}"));
                    break;
                }
            };
            let Some(last) = entries.last() else { break };
            if last.cookie <= cookie {
                report.problem(&dir_path, "directory cookies do not advance");
                break;
            }
            cookie = last.cookie;
            for entry in entries {
                if crate::fuse_fs::is_dot_or_dotdot(&entry.name) {
                    continue;
                }
                let path = dir_path.join(&entry.name);
                let attr = entry.attr;
                match attr.kind {
                    FileKind::Dir => {
                        if seen_dirs.insert(attr.ino) {
                            pending.push((attr.ino, path));
                        }
                    }
                    FileKind::File => {
                        if seen_files.insert(attr.ino) {
                            report.files += 1;
                            check_file(volume, attr.ino, attr.size, &path, &mut report);
                        }
                    }
                    FileKind::Symlink => {
                        report.symlinks += 1;
                        if let Err(error) = volume.readlink(attr.ino) {
                            report.problem(&path, format!("cannot read the link: {error}"));
                        }
                    }
                    _ => report.others += 1,
                }
                // `readdir` counted a lookup for the entry; the walk keeps none.
                volume.forget(attr.ino, 1);
            }
        }
    }
    report
}

fn check_file(
    volume: &Volume,
    ino: InodeNo,
    size: u64,
    path: &std::path::Path,
    report: &mut Report,
) {
    let handle = match volume.open_file(ino) {
        Ok(handle) => handle,
        Err(error) => {
            report.problem(path, format!("cannot open: {error}"));
            return;
        }
    };
    let mut offset = 0;
    while offset < size {
        let want = READ_BYTES.min(u32::try_from(size - offset).unwrap_or(READ_BYTES));
        match volume.read(ino, handle, offset, want) {
            Ok(data) if data.is_empty() => {
                report.problem(path, format!("ends at {offset} bytes, size says {size}"));
                break;
            }
            Ok(data) => {
                offset += data.len() as u64;
                report.bytes += data.len() as u64;
            }
            Err(error) => {
                report.problem(path, format!("unreadable at offset {offset}: {error}"));
                break;
            }
        }
    }
    if let Err(error) = volume.release(ino, handle) {
        report.problem(path, format!("cannot release: {error}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_reports_carry_their_problem_count() {
        let mut report = Report::default();
        assert_eq!(problems_in(&report.render()), Some(0));
        for i in 0..(PROBLEMS_LISTED_MAX + 5) {
            report.problem(std::path::Path::new(&format!("f{i}")), "unreadable");
        }
        let text = report.render();
        assert_eq!(problems_in(&text), Some(PROBLEMS_LISTED_MAX + 5));
        assert!(text.contains("/f0: unreadable"));
        assert!(text.contains("and 5 more"));
        assert_eq!(problems_in("nonsense"), None);
    }
}
