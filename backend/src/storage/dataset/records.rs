//! The official binary layout (`cifar-10-batches-bin`): records of one label byte followed by
//! 3072 bytes of CHW pixels. The workbench's cache uses the same layout.

use std::path::Path;

use unlearn_shared::cifar::{IMAGE_BYTES, NUM_CLASSES};

use super::{DataError, Split};

pub(crate) const RECORD_BYTES: usize = 1 + IMAGE_BYTES;

pub(crate) fn decode(path: &Path, bytes: &[u8], expected_images: usize) -> Result<Split, DataError> {
    let expected = expected_images * RECORD_BYTES;
    if bytes.len() != expected {
        return Err(DataError::file(
            path,
            format!("{} bytes, expected {expected} ({expected_images} records of {RECORD_BYTES}); the file is truncated or not CIFAR-10", bytes.len()),
        ));
    }
    let mut split = Split { images: Vec::with_capacity(expected_images * IMAGE_BYTES), labels: Vec::with_capacity(expected_images) };
    for (index, record) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        if record[0] as usize >= NUM_CLASSES {
            return Err(DataError::file(path, format!("record {index} has label {}, outside 0..{NUM_CLASSES}", record[0])));
        }
        split.labels.push(record[0]);
        split.images.extend_from_slice(&record[1..]);
    }
    Ok(split)
}

pub(crate) fn encode(split: &Split) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(split.len() * RECORD_BYTES);
    for index in 0..split.len() {
        bytes.push(split.labels[index]);
        bytes.extend_from_slice(split.image(index));
    }
    bytes
}

pub(crate) fn read(path: &Path, expected_images: usize) -> Result<Split, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::file(path, e.to_string()))?;
    decode(path, &bytes, expected_images)
}

/// Reads the official `cifar-10-batches-bin` folder.
pub(crate) fn read_official(dir: &Path) -> Result<super::Cifar10, DataError> {
    const PER_FILE: usize = 10_000;
    let mut train = Split { images: Vec::new(), labels: Vec::new() };
    for n in 1..=5 {
        let part = read(&dir.join(format!("data_batch_{n}.bin")), PER_FILE)?;
        train.images.extend(part.images);
        train.labels.extend(part.labels);
    }
    let test = read(&dir.join("test_batch.bin"), PER_FILE)?;
    Ok(super::Cifar10 { train, test })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(labels: &[u8]) -> Vec<u8> {
        labels.iter().flat_map(|&l| std::iter::once(l).chain((0..IMAGE_BYTES).map(move |i| (i as u8) ^ l))).collect()
    }

    #[test]
    fn records_round_trip() {
        let bytes = records(&[3, 0, 9]);
        let split = decode(Path::new("x.bin"), &bytes, 3).unwrap();
        assert_eq!(split.labels, vec![3, 0, 9]);
        assert_eq!(split.image(2)[5], 5 ^ 9);
        assert_eq!(encode(&split), bytes);
    }

    #[test]
    fn truncated_and_mislabelled_files_are_named() {
        let bytes = records(&[1, 2]);
        let error = decode(Path::new("data_batch_1.bin"), &bytes[..bytes.len() - 1], 2).unwrap_err().to_string();
        assert!(error.starts_with("data_batch_1.bin: ") && error.contains("truncated"), "{error}");

        let mut bad = bytes.clone();
        bad[RECORD_BYTES] = 12;
        let error = decode(Path::new("test_batch.bin"), &bad, 2).unwrap_err().to_string();
        assert!(error.contains("test_batch.bin") && error.contains("record 1 has label 12"), "{error}");
    }
}
