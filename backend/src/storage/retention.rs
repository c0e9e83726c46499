//! Disk budgets: when files of one kind outgrow theirs, the least recently used go first.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A file that a budget may delete.
#[derive(Debug, Clone)]
pub(crate) struct Kept {
    pub(crate) path: PathBuf,
    pub(crate) bytes: u64,
    pub(crate) used: SystemTime,
}

/// The regular files in `dir` whose names `keep` accepts.
fn files(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<Kept> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_str().is_some_and(&keep))
        .filter_map(|entry| {
            let meta = entry.metadata().ok().filter(|m| m.is_file())?;
            Some(Kept { path: entry.path(), bytes: meta.len(), used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH) })
        })
        .collect()
}

/// The files to delete, least recently used first, so that the rest fit in `budget` bytes.
fn over_budget(mut files: Vec<Kept>, budget: u64) -> Vec<Kept> {
    let mut total: u64 = files.iter().map(|f| f.bytes).sum();
    files.sort_by_key(|f| f.used);
    files
        .into_iter()
        .take_while(|file| {
            let over = total > budget;
            total -= file.bytes;
            over
        })
        .collect()
}

/// The other `.safetensors` files beside `kept` to delete, least recently used first, so
/// that they and `kept` (never deleted, even alone over the budget) fit in `budget` bytes.
pub(crate) fn to_delete_beside(kept: &Path, budget: u64) -> Vec<Kept> {
    let Some(dir) = kept.parent() else { return Vec::new() };
    let others = files(dir, |name| name.ends_with(".safetensors")).into_iter().filter(|f| f.path != kept).collect();
    over_budget(others, budget.saturating_sub(std::fs::metadata(kept).map_or(0, |m| m.len())))
}

/// Marks `path` as just used.
pub(crate) fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::options().append(true).open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_least_recently_used_go_until_the_rest_fit() {
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let file = |name: &str, bytes, used| Kept { path: name.into(), bytes, used: at(used) };
        let files = vec![file("new", 40, 30), file("old", 50, 10), file("mid", 30, 20)];
        let names = |kept: Vec<Kept>| kept.into_iter().map(|k| k.path.display().to_string()).collect::<Vec<_>>();
        assert_eq!(names(over_budget(files.clone(), 120)), Vec::<String>::new());
        assert_eq!(names(over_budget(files.clone(), 70)), ["old"]);
        assert_eq!(names(over_budget(files.clone(), 69)), ["old", "mid"]);
        assert_eq!(names(over_budget(files, 0)), ["old", "mid", "new"]);
    }
}
