//! CIFAR-10 facts every part of the workbench agrees on.

pub const CLASSES: [&str; 10] = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
pub const NUM_CLASSES: usize = CLASSES.len();
pub const IMAGE_SIDE: usize = 32;
pub const CHANNELS: usize = 3;
/// Bytes of one image in channel-planar (CHW) u8 layout.
pub const IMAGE_BYTES: usize = CHANNELS * IMAGE_SIDE * IMAGE_SIDE;
pub const TRAIN_IMAGES: usize = 50_000;
pub const TEST_IMAGES: usize = 10_000;

/// Per-channel normalisation of the seed recipe (on pixels scaled to [0, 1]).
pub const MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
pub const STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

/// The class index for a name, ignoring case, or for a number 0..=9.
pub fn class_from_str(text: &str) -> Option<usize> {
    let text = text.trim();
    text.parse::<usize>().ok().filter(|&index| index < NUM_CLASSES).or_else(|| CLASSES.iter().position(|name| name.eq_ignore_ascii_case(text)))
}

/// Appends one CHW u8 image, scaled to [0, 1] and normalised per channel, to `out`.
pub fn normalize_into(image: &[u8], out: &mut Vec<f32>) {
    let plane = IMAGE_SIDE * IMAGE_SIDE;
    out.extend(image.iter().enumerate().map(|(i, &v)| {
        let c = i / plane;
        (v as f32 / 255.0 - MEAN[c]) / STD[c]
    }));
}

/// A 32x32 RGBA image (as a canvas gives it) in channel-planar RGB, alpha dropped.
pub fn chw_from_rgba(rgba: &[u8]) -> Vec<u8> {
    let pixels = IMAGE_SIDE * IMAGE_SIDE;
    assert_eq!(rgba.len(), pixels * 4, "a 32x32 RGBA image");
    (0..CHANNELS).flat_map(|c| rgba.chunks_exact(4).map(move |px| px[c])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_parse_by_name_and_number() {
        assert_eq!(class_from_str("Dog"), Some(5));
        assert_eq!(class_from_str("9"), Some(9));
        assert_eq!(class_from_str("10"), None);
        assert_eq!(class_from_str("zebra"), None);
    }

    #[test]
    fn rgba_becomes_channel_planar_rgb() {
        let rgba: Vec<u8> = (0..1024).flat_map(|p| [1, 2, 3, (p % 256) as u8]).collect();
        let chw = chw_from_rgba(&rgba);
        assert_eq!(chw.len(), IMAGE_BYTES);
        assert!(chw[..1024].iter().all(|&v| v == 1) && chw[1024..2048].iter().all(|&v| v == 2) && chw[2048..].iter().all(|&v| v == 3));
    }
}
