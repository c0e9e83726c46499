//! Convolutions as wide matrix products of the unfolded input, on plain slices.

use std::ops::Range;

use rayon::prelude::*;

use super::matrix::{multiply, Scratch, Sum, View, SCRATCH_VALUES};

/// A plain convolution's shapes (no groups or dilation), and how many images one
/// matrix product takes.
#[derive(Clone)]
pub(super) struct Geometry {
    pub(super) batch: usize,
    pub(super) channels_in: usize,
    pub(super) input: [usize; 2],
    pub(super) channels_out: usize,
    pub(super) kernel: [usize; 2],
    pub(super) stride: [usize; 2],
    pub(super) padding: [usize; 2],
    pub(super) output: [usize; 2],
    images_per_product: usize,
}

impl Geometry {
    /// For an input `[batch, channels_in, height, width]` and a weight
    /// `[channels_out, channels_in, kernel_height, kernel_width]`.
    pub(super) fn new(input: [usize; 4], weight: [usize; 4], stride: [usize; 2], padding: [usize; 2]) -> Self {
        let [batch, channels_in, height, width] = input;
        let [channels_out, _, kernel_height, kernel_width] = weight;
        let out = |size: usize, kernel: usize, axis: usize| (size + 2 * padding[axis] - kernel) / stride[axis] + 1;
        let output = [out(height, kernel_height, 0), out(width, kernel_width, 1)];
        let mut geometry = Self {
            batch,
            channels_in,
            input: [height, width],
            channels_out,
            kernel: [kernel_height, kernel_width],
            stride,
            padding,
            output,
            images_per_product: 1,
        };
        let per_image = geometry.positions() * geometry.patch().max(channels_out);
        geometry.images_per_product = (SCRATCH_VALUES / per_image.max(1)).clamp(1, batch.max(1));
        geometry
    }

    pub(super) fn output_shape(&self) -> [usize; 4] {
        [self.batch, self.channels_out, self.output[0], self.output[1]]
    }

    pub(super) fn positions(&self) -> usize {
        self.output[0] * self.output[1]
    }

    /// Values one kernel application reads: input channels times kernel size.
    fn patch(&self) -> usize {
        self.channels_in * self.kernel[0] * self.kernel[1]
    }

    pub(super) fn plane(&self) -> usize {
        self.input[0] * self.input[1]
    }

    fn chunks(&self) -> impl Iterator<Item = Range<usize>> {
        image_chunks(self.batch, self.images_per_product)
    }
}

/// The images of a batch, `per_product` at a time.
pub(super) fn image_chunks(batch: usize, per_product: usize) -> impl Iterator<Item = Range<usize>> {
    (0..batch).step_by(per_product).map(move |first| first..(first + per_product).min(batch))
}

/// `Y[n, o, p] = sum over taps t = (c, ky, kx) of W[o, t] * X[n, c, at(p, ky, kx)]`, where
/// `at` is the input position output position p reads through kernel offset (ky, kx)
/// (stride and padding applied), and X is zero on the padding.
pub(super) fn forward(x: &[f32], weight: &[f32], g: &Geometry) -> Vec<f32> {
    let (patch, positions, channels_out) = (g.patch(), g.positions(), g.channels_out);
    let mut output = vec![0.0; g.batch * channels_out * positions];
    let mut unfolded = Scratch::take(patch * g.images_per_product * positions);
    let mut product = Scratch::take(channels_out * g.images_per_product * positions);
    for images in g.chunks() {
        let depth = images.len() * positions;
        unfold(x, g, images.clone(), &mut unfolded[..patch * depth]);
        let weight = View { values: weight, rows: channels_out, cols: patch, row_stride: patch, col_stride: 1 };
        let unfolded = View { values: &unfolded, rows: patch, cols: depth, row_stride: depth, col_stride: 1 };
        multiply(&mut product[..channels_out * depth], weight, unfolded, Sum::Overwrite);
        // Row o of the product holds Y[n, o, ..] for every image n of the chunk.
        output[images.start * channels_out * positions..images.end * channels_out * positions].par_chunks_mut(channels_out * positions).enumerate().for_each(
            |(image, output)| {
                for (o, output) in output.chunks_exact_mut(positions).enumerate() {
                    output.copy_from_slice(&product[o * depth + image * positions..][..positions]);
                }
            },
        );
    }
    output
}

/// `dX[n, c, q] = sum over o, (ky, kx) and the p with at(p, ky, kx) = q of W[o, (c, ky, kx)] * dY[n, o, p]`.
pub(super) fn input_gradient(weight: &[f32], grad: &[f32], g: &Geometry) -> Vec<f32> {
    let (patch, positions, channels_out) = (g.patch(), g.positions(), g.channels_out);
    let mut result = vec![0.0; g.batch * g.channels_in * g.plane()];
    let mut gathered = Scratch::take(channels_out * g.images_per_product * positions);
    let mut unfolded = Scratch::take(patch * g.images_per_product * positions);
    for images in g.chunks() {
        let depth = images.len() * positions;
        gather(grad, g, images.clone(), &mut gathered[..channels_out * depth]);
        let transposed = View { values: weight, rows: patch, cols: channels_out, row_stride: 1, col_stride: patch };
        let gathered = View { values: &gathered, rows: channels_out, cols: depth, row_stride: depth, col_stride: 1 };
        multiply(&mut unfolded[..patch * depth], transposed, gathered, Sum::Overwrite);
        fold(&unfolded[..patch * depth], g, images.clone(), &mut result[images.start * g.channels_in * g.plane()..images.end * g.channels_in * g.plane()]);
    }
    result
}

/// `dW[o, t] = sum over images n and positions p of dY[n, o, p] * X[n, c, at(p, ky, kx)]`, t = (c, ky, kx).
pub(super) fn weight_gradient(x: &[f32], grad: &[f32], g: &Geometry) -> Vec<f32> {
    let (patch, positions, channels_out) = (g.patch(), g.positions(), g.channels_out);
    let mut result = vec![0.0; channels_out * patch];
    let mut unfolded = Scratch::take(patch * g.images_per_product * positions);
    let mut gathered = Scratch::take(channels_out * g.images_per_product * positions);
    for images in g.chunks() {
        let depth = images.len() * positions;
        unfold(x, g, images.clone(), &mut unfolded[..patch * depth]);
        gather(grad, g, images.clone(), &mut gathered[..channels_out * depth]);
        let gathered = View { values: &gathered, rows: channels_out, cols: depth, row_stride: depth, col_stride: 1 };
        let transposed = View { values: &unfolded, rows: depth, cols: patch, row_stride: 1, col_stride: depth };
        let sum = if images.start == 0 { Sum::Overwrite } else { Sum::Accumulate };
        multiply(&mut result, gathered, transposed, sum);
    }
    result
}

/// Row t = (c, ky, kx) of `out` (`[patch, images x positions]`) gets what tap t meets at
/// each output position of `images`: zero where it falls on the padding.
fn unfold(x: &[f32], g: &Geometry, images: Range<usize>, out: &mut [f32]) {
    let depth = images.len() * g.positions();
    out.par_chunks_mut(depth).enumerate().for_each(|(tap, row)| {
        let (channel, ky, kx) = g.tap(tap);
        for (image, part) in images.clone().zip(row.chunks_exact_mut(g.positions())) {
            let plane = &x[(image * g.channels_in + channel) * g.plane()..][..g.plane()];
            for (oy, out) in part.chunks_exact_mut(g.output[1]).enumerate() {
                match g.input_row(oy, ky) {
                    Some(iy) => g.read_row(&plane[iy * g.input[1]..][..g.input[1]], kx, out),
                    None => out.fill(0.0),
                }
            }
        }
    });
}

/// The inverse of [`unfold`]'s layout, summing: plane (n, c) of `out` gets every tap of
/// channel c at every position of image n in `unfolded`.
fn fold(unfolded: &[f32], g: &Geometry, images: Range<usize>, out: &mut [f32]) {
    let depth = images.len() * g.positions();
    let taps = g.kernel[0] * g.kernel[1];
    out.par_chunks_mut(g.plane()).enumerate().for_each(|(index, plane)| {
        let (image, channel) = (index / g.channels_in, index % g.channels_in);
        plane.fill(0.0);
        for tap in channel * taps..(channel + 1) * taps {
            let (_, ky, kx) = g.tap(tap);
            let row = &unfolded[tap * depth + image * g.positions()..][..g.positions()];
            for (oy, values) in row.chunks_exact(g.output[1]).enumerate() {
                if let Some(iy) = g.input_row(oy, ky) {
                    g.add_row(values, kx, &mut plane[iy * g.input[1]..][..g.input[1]]);
                }
            }
        }
    });
}

/// Row o of `out` (`[channels_out, images x positions]`) gets `dY[n, o, ..]` for every image n.
fn gather(grad: &[f32], g: &Geometry, images: Range<usize>, out: &mut [f32]) {
    let positions = g.positions();
    out.par_chunks_mut(images.len() * positions).enumerate().for_each(|(o, row)| {
        for (image, part) in images.clone().zip(row.chunks_exact_mut(positions)) {
            part.copy_from_slice(&grad[(image * g.channels_out + o) * positions..][..positions]);
        }
    });
}

impl Geometry {
    /// Tap t's channel and kernel offsets.
    fn tap(&self, tap: usize) -> (usize, usize, usize) {
        let [height, width] = self.kernel;
        (tap / (height * width), tap / width % height, tap % width)
    }

    /// The input row that output row `oy` reads at kernel row `ky`, if not padding.
    fn input_row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.stride[0] + ky).checked_sub(self.padding[0]).filter(|&iy| iy < self.input[0])
    }

    /// The output columns whose reads at kernel column `kx` fall inside the input, and the
    /// input column of the first; stride 1 only.
    fn inside(&self, kx: usize) -> (Range<usize>, usize) {
        let start = self.padding[1].saturating_sub(kx).min(self.output[1]);
        let end = (self.input[1] + self.padding[1]).saturating_sub(kx).min(self.output[1]).max(start);
        (start..end, (start + kx).saturating_sub(self.padding[1]).min(self.input[1]))
    }

    /// `out[ox]` = the input value output column `ox` reads at kernel column `kx` in `line`.
    fn read_row(&self, line: &[f32], kx: usize, out: &mut [f32]) {
        if self.stride[1] == 1 {
            let (inside, from) = self.inside(kx);
            out[..inside.start].fill(0.0);
            out[inside.clone()].copy_from_slice(&line[from..][..inside.len()]);
            out[inside.end..].fill(0.0);
        } else {
            for (ox, value) in out.iter_mut().enumerate() {
                *value = (ox * self.stride[1] + kx).checked_sub(self.padding[1]).and_then(|ix| line.get(ix)).copied().unwrap_or(0.0);
            }
        }
    }

    /// The transpose of [`Self::read_row`], summing into `line`.
    fn add_row(&self, values: &[f32], kx: usize, line: &mut [f32]) {
        if self.stride[1] == 1 {
            let (inside, from) = self.inside(kx);
            for (target, value) in line[from..][..inside.len()].iter_mut().zip(&values[inside]) {
                *target += value;
            }
        } else {
            for (ox, value) in values.iter().enumerate() {
                if let Some(target) = (ox * self.stride[1] + kx).checked_sub(self.padding[1]).and_then(|ix| line.get_mut(ix)) {
                    *target += value;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::matrix::tests::assert_close;
    use super::*;

    /// One product of the convolution: output (n, o, p) takes tap `tap` times input `input`.
    struct Term {
        output: usize,
        weight: usize,
        input: usize,
    }

    /// Every product that does not fall on the padding, by flat index.
    fn terms(g: &Geometry) -> Vec<Term> {
        let mut terms = Vec::new();
        let [kh, kw] = g.kernel;
        for n in 0..g.batch {
            for o in 0..g.channels_out {
                for p in 0..g.positions() {
                    let (oy, ox) = (p / g.output[1], p % g.output[1]);
                    for tap in 0..g.patch() {
                        let (c, ky, kx) = (tap / (kh * kw), tap / kw % kh, tap % kw);
                        let (iy, ix) = ((oy * g.stride[0] + ky) as isize - g.padding[0] as isize, (ox * g.stride[1] + kx) as isize - g.padding[1] as isize);
                        if (0..g.input[0] as isize).contains(&iy) && (0..g.input[1] as isize).contains(&ix) {
                            let input = ((n * g.channels_in + c) * g.input[0] + iy as usize) * g.input[1] + ix as usize;
                            terms.push(Term { output: (n * g.channels_out + o) * g.positions() + p, weight: o * g.patch() + tap, input });
                        }
                    }
                }
            }
        }
        terms
    }

    #[test]
    fn products_equal_the_definitions_term_by_term() {
        // A 3x2 kernel, strides 2 and 1, paddings 1 and 0, on a 5x7 input: output 3x6.
        let mut g = Geometry::new([5, 2, 5, 7], [3, 2, 3, 2], [2, 1], [1, 0]);
        assert_eq!(g.output, [3, 6]);
        let values = |count: usize, seed: usize| (0..count).map(|i| ((i * seed % 101) as f32 - 50.0) / 25.0).collect::<Vec<_>>();
        let x = values(g.batch * g.channels_in * g.plane(), 37);
        let weight = values(g.channels_out * g.patch(), 53);
        let grad = values(g.batch * g.channels_out * g.positions(), 29);
        let (mut output, mut input_grad, mut weight_grad) = (vec![0.0; grad.len()], vec![0.0; x.len()], vec![0.0; weight.len()]);
        for Term { output: out, weight: w, input } in terms(&g) {
            output[out] += weight[w] as f64 * x[input] as f64;
            input_grad[input] += weight[w] as f64 * grad[out] as f64;
            weight_grad[w] += grad[out] as f64 * x[input] as f64;
        }
        // One image per product, two (the last chunk short), and all at once.
        for images in [1, 2, 5] {
            g.images_per_product = images;
            assert_close(&forward(&x, &weight, &g), &output, &format!("output, {images} images per product"));
            assert_close(&input_gradient(&weight, &grad, &g), &input_grad, &format!("input gradient, {images} images per product"));
            assert_close(&weight_gradient(&x, &grad, &g), &weight_grad, &format!("weight gradient, {images} images per product"));
        }
    }
}
