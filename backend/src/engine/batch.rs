//! Turning images of a split into normalised tensors, with the seed's augmentation.

use burn::prelude::*;
use rand::Rng;
use unlearn_shared::cifar::{normalize_into, IMAGE_BYTES, IMAGE_SIDE};

use crate::storage::dataset::Split;

/// Zero padding of the random crop, in pixels.
const CROP_PADDING: usize = 4;

pub(crate) struct Batch<B: Backend> {
    pub(crate) images: Tensor<B, 4>,
    pub(crate) labels: Tensor<B, 1, Int>,
}

/// The images at `indices`, normalised.
pub(crate) fn batch<B: Backend>(split: &Split, indices: &[usize], device: &B::Device) -> Batch<B> {
    let mut pixels = Vec::with_capacity(indices.len() * IMAGE_BYTES);
    indices.iter().for_each(|&i| normalize_into(split.image(i), &mut pixels));
    to_tensors(split, indices, pixels, device)
}

/// The images at `indices` with the seed's augmentation (random crop with zero padding 4,
/// then a horizontal flip with p 0.5), normalised.
pub(crate) fn augmented_batch<B: Backend>(split: &Split, indices: &[usize], rng: &mut impl Rng, device: &B::Device) -> Batch<B> {
    let mut pixels = Vec::with_capacity(indices.len() * IMAGE_BYTES);
    let mut scratch = [0u8; IMAGE_BYTES];
    for &i in indices {
        crop_and_flip(split.image(i), &mut scratch, rng);
        normalize_into(&scratch, &mut pixels);
    }
    to_tensors(split, indices, pixels, device)
}

fn to_tensors<B: Backend>(split: &Split, indices: &[usize], pixels: Vec<f32>, device: &B::Device) -> Batch<B> {
    Batch { images: Tensor::from_data(TensorData::new(pixels, [indices.len(), 3, IMAGE_SIDE, IMAGE_SIDE]), device), labels: labels(split, indices, device) }
}

/// The labels of the images at `indices`.
pub(crate) fn labels<B: Backend>(split: &Split, indices: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let labels: Vec<i64> = indices.iter().map(|&i| split.label(i) as i64).collect();
    Tensor::from_data(TensorData::new(labels, [indices.len()]), device)
}

/// torchvision's `RandomCrop(32, padding=4)` then `RandomHorizontalFlip()` on a CHW image.
fn crop_and_flip(image: &[u8], out: &mut [u8; IMAGE_BYTES], rng: &mut impl Rng) {
    let side = IMAGE_SIDE as isize;
    let dy = rng.random_range(0..=2 * CROP_PADDING) as isize - CROP_PADDING as isize;
    let dx = rng.random_range(0..=2 * CROP_PADDING) as isize - CROP_PADDING as isize;
    let flip = rng.random_bool(0.5);
    for c in 0..3 {
        let plane = &image[c * IMAGE_SIDE * IMAGE_SIDE..(c + 1) * IMAGE_SIDE * IMAGE_SIDE];
        for y in 0..side {
            for x in 0..side {
                let column = if flip { side - 1 - x } else { x };
                let (sy, sx) = (y + dy, column + dx);
                let inside = (0..side).contains(&sy) && (0..side).contains(&sx);
                out[(c as isize * side * side + y * side + x) as usize] = if inside { plane[(sy * side + sx) as usize] } else { 0 };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn crop_keeps_pixels_and_pads_with_zero() {
        let image: Vec<u8> = (0..IMAGE_BYTES).map(|i| (i % 251) as u8 + 1).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let mut shifted_or_flipped = 0;
        for _ in 0..50 {
            let mut out = [0u8; IMAGE_BYTES];
            crop_and_flip(&image, &mut out, &mut rng);
            let zeros = out.iter().filter(|&&v| v == 0).count();
            // A shift of (dy, dx) blanks 3 * (32*|dy| + 32*|dx| - |dy*dx|) pixels; at most 4 each way.
            assert!(zeros <= 3 * (32 * 4 + 32 * 4 - 16), "{zeros} padded pixels");
            assert_eq!(zeros % 3, 0, "padding is the same in every channel");
            shifted_or_flipped += usize::from(out[..] != image[..]);
        }
        assert!(shifted_or_flipped > 40, "augmentation changed only {shifted_or_flipped}/50 images");
    }
}
