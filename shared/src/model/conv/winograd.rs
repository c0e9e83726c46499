//! 3x3 convolutions of stride 1 in Winograd's minimal filtering form F(2x2, 3x3) (Lavin and
//! Gray, 2016): each 2x2 block of outputs comes from a 4x4 block of inputs with 16
//! multiplications per pair of channels instead of 36. Transformed, the convolution is 16
//! matrix products over channels, one per value of the 4x4 tile; the transforms of input and
//! output are additions only.
//!
//! The input gradient of such a convolution is one too (the output gradient convolved with
//! the flipped kernels, channels swapped). The weight gradient is the transpose of the
//! forward pass: the output gradient's blocks expanded to 4x4 (`A dY Aᵀ`), 16 products over
//! the tiles with the transformed input, and each 4x4 sum brought back to 3x3 (`Gᵀ dU G`).

use std::ops::Range;

use rayon::prelude::*;

use super::matrix::{multiply, Scratch, Sum, View};
use super::unfolded::{image_chunks, Geometry};
use crate::model::wide::wide_fn;

/// Values of a transformed tile (4x4).
const TILE: usize = 16;

/// Channels (in or out) below which the unfolded product is kept: 16 products over the 3
/// channels of the model's first convolution are too thin to pay for the transforms.
const MIN_CHANNELS: usize = 16;

/// Transformed values one round keeps (2 MiB): the input and the products (forward pass), or
/// the input and the output gradient (weight gradient); small enough to stay in a core's
/// cache between the transforms and the products.
const ROUND_VALUES: usize = 1 << 19;

/// Blocks below which a round is not cut: the products get too narrow (forward pass) or
/// too shallow (weight gradient) for gemm.
const MIN_ROUND_TILES: usize = 256;

/// A convolution in F(2x2, 3x3) tiles: its shapes, and how many images a round takes.
pub(super) struct Plan {
    g: Geometry,
    /// Tile rows and columns per image; the last may reach past the output's edge.
    tile_grid: [usize; 2],
    /// Images whose transformed values stay in cache through their transforms and products:
    /// rounds run in parallel.
    images_per_round: usize,
}

impl Plan {
    /// For the convolution `g`, if it is a 3x3 one of stride 1 over enough channels.
    pub(super) fn forward(g: &Geometry) -> Option<Plan> {
        Self::of(g.clone())
    }

    /// For the input gradient of `g`: the output gradient convolved with the flipped kernels,
    /// input and output channels swapped, padding `2 - p`, which gives the input's size.
    pub(super) fn input_gradient(g: &Geometry) -> Option<Plan> {
        // Checked first: other shapes would not give the input's size back.
        if g.kernel != [3, 3] || g.stride != [1, 1] {
            return None;
        }
        let padding = [2usize.checked_sub(g.padding[0])?, 2usize.checked_sub(g.padding[1])?];
        Self::of(Geometry::new(g.output_shape(), [g.channels_in, g.channels_out, 3, 3], [1, 1], padding))
    }

    fn of(g: Geometry) -> Option<Plan> {
        // Paddings past the kernel's reach (none in the model) are left unfolded, as their
        // input gradients must be.
        if g.kernel != [3, 3] || g.stride != [1, 1] || g.padding.iter().any(|&p| p > 2) || g.channels_in.min(g.channels_out) < MIN_CHANNELS {
            return None;
        }
        let tile_grid = [g.output[0].div_ceil(2), g.output[1].div_ceil(2)];
        let per_image = tile_grid[0] * tile_grid[1];
        let images = |count: usize| count.clamp(1, g.batch.max(1));
        let round_tiles = (ROUND_VALUES / (TILE * (g.channels_in + g.channels_out))).max(MIN_ROUND_TILES);
        let images_per_round = images(round_tiles / per_image);
        Some(Plan { g, tile_grid, images_per_round })
    }

    fn tiles_per_image(&self) -> usize {
        self.tile_grid[0] * self.tile_grid[1]
    }
}

/// The convolution of `x` with `weight`, as `unfolded::forward` computes it, for the plan
/// [`Plan::forward`] made.
pub(super) fn forward(x: &[f32], weight: &[f32], plan: &Plan) -> Vec<f32> {
    convolve(x, &transform_kernels(weight, plan), plan)
}

/// The input gradient, as `unfolded::input_gradient` computes it, for the plan
/// [`Plan::input_gradient`] made: kernel (o, c) of `weight` becomes kernel (c, o) of the
/// gradient's convolution, turned half a circle.
pub(super) fn input_gradient(weight: &[f32], grad: &[f32], plan: &Plan) -> Vec<f32> {
    convolve(grad, &transform_kernels(&flip_kernels(weight, plan), plan), plan)
}

/// The weight gradient, as `unfolded::weight_gradient` computes it, for the plan
/// [`Plan::forward`] made. Each of at most one run of rounds per thread sums the 16 products, each
/// round's transformed values while they are in cache; the runs' sums are added last, so
/// the rounding depends on the thread count.
pub(super) fn weight_gradient(x: &[f32], grad: &[f32], plan: &Plan) -> Vec<f32> {
    let g = &plan.g;
    let (channels_in, channels_out, per_image) = (g.channels_in, g.channels_out, plan.tiles_per_image());
    let kernels = channels_out * channels_in;
    let rounds: Vec<Range<usize>> = image_chunks(g.batch, plan.images_per_round).collect();
    let rounds_per_run = rounds.len().div_ceil(rayon::current_num_threads()).max(1);
    // `[TILE][channels_out][channels_in]`: value `value` of every kernel's transformed gradient.
    let run_sums = rounds.par_chunks(rounds_per_run).map(|rounds| {
        let mut sums = Scratch::take(TILE * kernels);
        for (index, images) in rounds.iter().enumerate() {
            let tiles = images.len() * per_image;
            let mut inputs = Scratch::take(channels_in * TILE * tiles);
            let mut grads = Scratch::take(channels_out * TILE * tiles);
            transform_input(x, plan, images.clone(), &mut inputs);
            transform_gradient(grad, plan, images.clone(), &mut grads);
            let (inputs, grads) = (&*inputs, &*grads);
            let sum = if index == 0 { Sum::Overwrite } else { Sum::Accumulate };
            sums.par_chunks_mut(kernels).enumerate().for_each(|(value, sums)| {
                let grads = View { values: &grads[value * tiles..], rows: channels_out, cols: tiles, row_stride: TILE * tiles, col_stride: 1 };
                let inputs = View { values: &inputs[value * tiles..], rows: tiles, cols: channels_in, row_stride: 1, col_stride: TILE * tiles };
                multiply(sums, grads, inputs, sum);
            });
        }
        sums
    });
    let Some(sums) = run_sums.reduce_with(|mut sums, other| {
        sums.par_iter_mut().zip(&*other).for_each(|(sum, other)| *sum += other);
        sums
    }) else {
        return vec![0.0; kernels * 9];
    };
    let mut result = vec![0.0; kernels * 9];
    result.par_chunks_mut(channels_in * 9).enumerate().for_each(|(o, kernels)| gradient_row(&sums, o, channels_out, kernels));
    result
}

fn convolve(x: &[f32], kernels: &[f32], plan: &Plan) -> Vec<f32> {
    let g = &plan.g;
    let (channels_in, channels_out, per_image) = (g.channels_in, g.channels_out, plan.tiles_per_image());
    let planes = channels_out * g.positions();
    let mut output = vec![0.0; g.batch * planes];
    output.par_chunks_mut((plan.images_per_round * planes).max(1)).enumerate().for_each(|(round, output)| {
        let first = round * plan.images_per_round;
        let images = first..first + output.len() / planes;
        let tiles = images.len() * per_image;
        let mut inputs = Scratch::take(channels_in * TILE * tiles);
        let mut products = Scratch::take(TILE * channels_out * tiles);
        transform_input(x, plan, images, &mut inputs);
        let inputs = &*inputs;
        products.par_chunks_mut(channels_out * tiles).enumerate().for_each(|(value, product)| {
            // Value `value` of every transformed kernel against that of every input tile.
            let kernels =
                View { values: &kernels[value * channels_in..], rows: channels_out, cols: channels_in, row_stride: TILE * channels_in, col_stride: 1 };
            let inputs = View { values: &inputs[value * tiles..], rows: channels_in, cols: tiles, row_stride: TILE * tiles, col_stride: 1 };
            multiply(product, kernels, inputs, Sum::Overwrite);
        });
        transform_output(&products, plan, output);
    });
    output
}

/// Every 3x3 kernel `k` of `weights` (`[channels_out][channels_in][9]` of the plan) as
/// `G k Gᵀ`, laid out `[channels_out][TILE][channels_in]`.
fn transform_kernels(weights: &[f32], plan: &Plan) -> Scratch {
    let channels_in = plan.g.channels_in;
    let mut kernels = Scratch::take(plan.g.channels_out * TILE * channels_in);
    kernels.par_chunks_mut(TILE * channels_in).zip(weights.par_chunks(channels_in * 9)).for_each(|(out, row)| kernel_row(row, out));
    kernels
}

/// Kernels transformed at once, one per vector lane (an AVX-512 vector holds 16 f32).
const LANES: usize = 16;

wide_fn! {
    /// [`transform_kernels`] of one output channel: `out[value][c]` from `kernels[c][9]`.
    fn kernel_row(kernels: &[f32], out: &mut [f32]) {
        let channels = kernels.len() / 9;
        for first in (0..channels).step_by(LANES) {
            let lanes = LANES.min(channels - first);
            // Tap by lane, so that the transform runs on every lane at once.
            let mut taps = [[0.0; LANES]; 9];
            for (lane, kernel) in kernels[first * 9..][..lanes * 9].chunks_exact(9).enumerate() {
                for (tap, &value) in kernel.iter().enumerate() {
                    taps[tap][lane] = value;
                }
            }
            let mut tile = [[0.0; LANES]; TILE];
            for lane in 0..LANES {
                for (value, transformed) in kernel_tile(&std::array::from_fn(|tap| taps[tap][lane])).into_iter().enumerate() {
                    tile[value][lane] = transformed;
                }
            }
            for (value, transformed) in tile.iter().enumerate() {
                out[value * channels + first..][..lanes].copy_from_slice(&transformed[..lanes]);
            }
        }
    }
}

wide_fn! {
    /// The weight gradient's kernels of output channel `o`, `out[c][9]`, from the sums
    /// `[TILE][channels_out][channels_in]`: `Gᵀ u G` of each.
    fn gradient_row(sums: &[f32], o: usize, channels_out: usize, out: &mut [f32]) {
        let channels_in = out.len() / 9;
        for first in (0..channels_in).step_by(LANES) {
            let lanes = LANES.min(channels_in - first);
            let mut tile = [[0.0; LANES]; TILE];
            for (value, tile) in tile.iter_mut().enumerate() {
                tile[..lanes].copy_from_slice(&sums[(value * channels_out + o) * channels_in + first..][..lanes]);
            }
            let mut taps = [[0.0; LANES]; 9];
            for lane in 0..LANES {
                for (tap, kernel) in kernel_gradient(&std::array::from_fn(|value| tile[value][lane])).into_iter().enumerate() {
                    taps[tap][lane] = kernel;
                }
            }
            for (lane, kernel) in out[first * 9..][..lanes * 9].chunks_exact_mut(9).enumerate() {
                for (tap, value) in kernel.iter_mut().enumerate() {
                    *value = taps[tap][lane];
                }
            }
        }
    }
}

/// Rows of the flipped kernels [`flip_kernels`] writes at once, reading each output channel's
/// kernels from `weight` in runs of this many.
const FLIP_ROWS: usize = 16;

/// The input gradient's kernels, `[c][o][9]` for the plan [`Plan::input_gradient`] made: kernel
/// (o, c) of `weight` as kernel (c, o), turned half a circle. In blocks of rows, as reading
/// `weight` down its columns one kernel at a time, a page apart, missed the cache.
fn flip_kernels(weight: &[f32], plan: &Plan) -> Scratch {
    // The plan's output channels are the convolution's input channels.
    let (channels_in, channels_out) = (plan.g.channels_out, plan.g.channels_in);
    let mut flipped = Scratch::take(weight.len());
    flipped.par_chunks_mut(FLIP_ROWS * channels_out * 9).enumerate().for_each(|(block, rows)| {
        for o in 0..channels_out {
            let run = &weight[(o * channels_in + block * FLIP_ROWS) * 9..];
            for (row, kernel) in rows.chunks_exact_mut(channels_out * 9).zip(run.chunks_exact(9)) {
                let flipped = &mut row[o * 9..][..9];
                flipped.copy_from_slice(kernel);
                flipped.reverse();
            }
        }
    });
    flipped
}

/// `G k Gᵀ` of a 3x3 kernel, row-major, with G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]].
#[inline(always)]
fn kernel_tile(k: &[f32; 9]) -> [f32; TILE] {
    let g = |a: f32, b: f32, c: f32| [a, (a + b + c) * 0.5, (a - b + c) * 0.5, c];
    // Column j of G k.
    let columns: [[f32; 4]; 3] = std::array::from_fn(|j| g(k[j], k[3 + j], k[6 + j]));
    let mut tile = [0.0; TILE];
    for (i, row) in tile.chunks_exact_mut(4).enumerate() {
        row.copy_from_slice(&g(columns[0][i], columns[1][i], columns[2][i]));
    }
    tile
}

/// `Gᵀ u G` of a 4x4 tile's gradient: the 3x3 kernel's, the transpose of [`kernel_tile`].
#[inline(always)]
fn kernel_gradient(u: &[f32; TILE]) -> [f32; 9] {
    let g = |a: f32, b: f32, c: f32, d: f32| [a + (b + c) * 0.5, (b - c) * 0.5, (b + c) * 0.5 + d];
    // Column j of Gᵀ u.
    let columns: [[f32; 3]; 4] = std::array::from_fn(|j| g(u[j], u[4 + j], u[8 + j], u[12 + j]));
    let mut kernel = [0.0; 9];
    for (a, row) in kernel.chunks_exact_mut(3).enumerate() {
        row.copy_from_slice(&g(columns[0][a], columns[1][a], columns[2][a], columns[3][a]));
    }
    kernel
}

/// `Bᵀ d B` of every 4x4 input block d of `images`, with Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0],
/// [0, -1, 1, 0], [0, 1, 0, -1]], laid out `[channels_in][TILE][tiles]`, tiles by image, tile
/// row and tile column. Blocks start at every second row and column, `padding` before the
/// input; values outside it are zero.
fn transform_input(x: &[f32], plan: &Plan, images: Range<usize>, out: &mut [f32]) {
    let [rows, cols] = plan.tile_grid;
    let (lines, span) = (2 * rows + 2, cols + 1);
    out.par_chunks_mut(TILE * images.len() * rows * cols)
        .enumerate()
        .for_each_init(|| vec![0.0; (2 * lines + 2 + 8) * span], |buffer, (channel, out)| input_channel(x, plan, images.clone(), channel, buffer, out));
}

wide_fn! {
    /// [`transform_input`] of one channel.
    fn input_channel(x: &[f32], plan: &Plan, images: Range<usize>, channel: usize, buffer: &mut [f32], out: &mut [f32]) {
        let (g, [rows, cols]) = (&plan.g, plan.tile_grid);
        let tiles = images.len() * rows * cols;
        // The padded lines the blocks read, each split into even and odd columns: a block's
        // columns 0 and 2 are even columns k and k + 1 of its lines, 1 and 3 odd ones.
        let (lines, span) = (2 * rows + 2, cols + 1);
        let (split, rest) = buffer.split_at_mut(2 * lines * span);
        let (padded, combined) = rest.split_at_mut(2 * span);
        for (index, image) in images.clone().enumerate() {
            let plane = &x[(image * g.channels_in + channel) * g.plane()..][..g.plane()];
            for (line, split) in split.chunks_exact_mut(2 * span).enumerate() {
                padded.fill(0.0);
                if let Some(iy) = line.checked_sub(g.padding[0]).filter(|&iy| iy < g.input[0]) {
                    padded[g.padding[1]..][..g.input[1]].copy_from_slice(&plane[iy * g.input[1]..][..g.input[1]]);
                }
                let (even, odd) = split.split_at_mut(span);
                for ((pair, even), odd) in padded.chunks_exact(2).zip(even).zip(odd) {
                    (*even, *odd) = (pair[0], pair[1]);
                }
            }
            for ty in 0..rows {
                // Bᵀ down the block's four lines, even columns then odd.
                let (even, odd) = combined.split_at_mut(4 * span);
                for (parity, combined) in [even, odd].into_iter().enumerate() {
                    let line = |l: usize| &split[(2 * (2 * ty + l) + parity) * span..][..span];
                    let (c0, rest) = combined.split_at_mut(span);
                    let (c1, rest) = rest.split_at_mut(span);
                    let (c2, c3) = rest.split_at_mut(span);
                    let lines = line(0).iter().zip(line(1)).zip(line(2)).zip(line(3));
                    for (((((((a, b), c), d), c0), c1), c2), c3) in lines.zip(c0).zip(c1).zip(c2).zip(c3) {
                        (*c0, *c1, *c2, *c3) = (a - c, b + c, c - b, b - d);
                    }
                }
                // And across: row i of every block of the tile row.
                let first = (index * rows + ty) * cols;
                for i in 0..4 {
                    let (e, o) = (&combined[i * span..][..span], &combined[(4 + i) * span..][..span]);
                    let run = |j: usize| (4 * i + j) * tiles + first;
                    for ((v, a), b) in out[run(0)..][..cols].iter_mut().zip(&e[..cols]).zip(&e[1..]) {
                        *v = a - b;
                    }
                    for ((v, a), b) in out[run(1)..][..cols].iter_mut().zip(&o[..cols]).zip(&e[1..]) {
                        *v = a + b;
                    }
                    for ((v, a), b) in out[run(2)..][..cols].iter_mut().zip(&e[1..]).zip(&o[..cols]) {
                        *v = a - b;
                    }
                    for ((v, a), b) in out[run(3)..][..cols].iter_mut().zip(&o[..cols]).zip(&o[1..]) {
                        *v = a - b;
                    }
                }
            }
        }
    }
}

/// `A y Aᵀ` of every 2x2 block y of the output gradient of `images` (zero past the output's
/// edge), the transpose of [`transform_output`], laid out `[channels_out][TILE][tiles]`.
fn transform_gradient(grad: &[f32], plan: &Plan, images: Range<usize>, out: &mut [f32]) {
    let [rows, cols] = plan.tile_grid;
    out.par_chunks_mut(TILE * images.len() * rows * cols)
        .enumerate()
        .for_each_init(|| vec![0.0; 12 * cols], |buffer, (o, out)| gradient_channel(grad, plan, images.clone(), o, buffer, out));
}

wide_fn! {
    /// [`transform_gradient`] of output channel `o`.
    fn gradient_channel(grad: &[f32], plan: &Plan, images: Range<usize>, o: usize, buffer: &mut [f32], out: &mut [f32]) {
        let (g, [rows, cols]) = (&plan.g, plan.tile_grid);
        let [height, width] = g.output;
        let tiles = images.len() * rows * cols;
        // Row r of A, for the block's values i = 0..4 down a column: (y0, y0 + y1, y0 - y1, -y1).
        const A: [[f32; 2]; 4] = [[1.0, 0.0], [1.0, 1.0], [1.0, -1.0], [0.0, -1.0]];
        // The block's two rows split into even and odd columns, then A down them.
        let (lines, down) = buffer.split_at_mut(4 * cols);
        for (index, image) in images.clone().enumerate() {
            let plane = &grad[(image * g.channels_out + o) * height * width..][..height * width];
            for ty in 0..rows {
                for (r, line) in lines.chunks_exact_mut(2 * cols).enumerate() {
                    let (even, odd) = line.split_at_mut(cols);
                    match plane.get((2 * ty + r) * width..(2 * ty + r + 1) * width) {
                        Some(row) => {
                            for (t, (even, odd)) in even.iter_mut().zip(odd).enumerate() {
                                (*even, *odd) = (row[2 * t], row.get(2 * t + 1).copied().unwrap_or(0.0));
                            }
                        }
                        None => line.fill(0.0),
                    }
                }
                for (at, down) in down.chunks_exact_mut(cols).enumerate() {
                    let ([top, bottom], parity) = (A[at / 2], at % 2);
                    let (first, second) = (&lines[parity * cols..][..cols], &lines[(2 + parity) * cols..][..cols]);
                    for ((v, a), b) in down.iter_mut().zip(first).zip(second) {
                        *v = top * a + bottom * b;
                    }
                }
                // And across: row i of every block, into its four values.
                let first = (index * rows + ty) * cols;
                for i in 0..4 {
                    let (even, odd) = (&down[2 * i * cols..][..cols], &down[(2 * i + 1) * cols..][..cols]);
                    let run = |j: usize| (4 * i + j) * tiles + first;
                    out[run(0)..][..cols].copy_from_slice(even);
                    for ((v, a), b) in out[run(1)..][..cols].iter_mut().zip(even).zip(odd) {
                        *v = a + b;
                    }
                    for ((v, a), b) in out[run(2)..][..cols].iter_mut().zip(even).zip(odd) {
                        *v = a - b;
                    }
                    for (v, b) in out[run(3)..][..cols].iter_mut().zip(odd) {
                        *v = -b;
                    }
                }
            }
        }
    }
}

/// `Aᵀ m A` of every transformed product tile m, with Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]],
/// into the output planes `out` of the images `products` holds (`[TILE][channels_out][tiles]`);
/// a block's row or column past the output's edge is dropped.
fn transform_output(products: &[f32], plan: &Plan, out: &mut [f32]) {
    let (g, [rows, cols]) = (&plan.g, plan.tile_grid);
    let (channels_out, [height, width]) = (g.channels_out, g.output);
    let tiles = out.len() / (channels_out * height * width) * rows * cols;
    out.par_chunks_mut(height * width)
        .enumerate()
        .for_each_init(|| vec![0.0; 10 * cols], |sums, (index, plane)| output_plane(products, plan, tiles, index, sums, plane));
}

wide_fn! {
    /// [`transform_output`] of plane `index` (image by output channel) of `products`, which
    /// holds `tiles` blocks.
    fn output_plane(products: &[f32], plan: &Plan, tiles: usize, index: usize, sums: &mut [f32], plane: &mut [f32]) {
        let (g, [rows, cols]) = (&plan.g, plan.tile_grid);
        let (channels_out, [height, width]) = (g.channels_out, g.output);
        let (image, o) = (index / channels_out, index % channels_out);
        let (across, line) = sums.split_at_mut(8 * cols);
        for ty in 0..rows {
            let first = (image * rows + ty) * cols;
            let value = |v: usize| &products[(v * channels_out + o) * tiles + first..][..cols];
            // Across row i of the blocks: its left and right output columns.
            for (i, across) in across.chunks_exact_mut(2 * cols).enumerate() {
                let (left, right) = across.split_at_mut(cols);
                let values = value(4 * i).iter().zip(value(4 * i + 1)).zip(value(4 * i + 2)).zip(value(4 * i + 3));
                for ((((m0, m1), m2), m3), (left, right)) in values.zip(left.iter_mut().zip(right)) {
                    (*left, *right) = (m0 + m1 + m2, m1 - m2 - m3);
                }
            }
            // Down: the blocks' two output rows.
            let part = |i: usize, column: usize| &across[(2 * i + column) * cols..][..cols];
            for r in 0..2.min(height - 2 * ty) {
                for column in 0..2 {
                    let sums = part(0, column).iter().zip(part(1, column)).zip(part(2, column)).zip(part(3, column));
                    for ((((a, b), c), d), pair) in sums.zip(line.chunks_exact_mut(2)) {
                        pair[column] = if r == 0 { a + b + c } else { b - c - d };
                    }
                }
                plane[(2 * ty + r) * width..][..width].copy_from_slice(&line[..width]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::unfolded;
    use super::*;
    use crate::model::wide::tests::in_every_width;

    fn values(count: usize, seed: usize) -> Vec<f32> {
        (0..count).map(|i| ((i * seed % 101) as f32 - 50.0) / 25.0).collect()
    }

    fn assert_close(got: &[f32], expected: &[f32], what: &str) {
        assert_eq!(got.len(), expected.len(), "{what}");
        // The folds below would drop a NaN.
        assert!(got.iter().all(|value| value.is_finite()), "{what}: not finite");
        let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let error = got.iter().zip(expected).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(error <= 1e-5 * scale, "{what}: error {error} of {scale}");
    }

    /// Against the unfolded products (checked term by term against the definition): odd
    /// and even sizes (blocks past the edge), paddings 0 to 2, unequal ones too, one image
    /// per round, two (the last round short) and all, every form of the transforms' loops
    /// (a row of 66 blocks, long enough for their vector bodies), and channel counts that
    /// leave the kernels' last lanes and blocks short.
    #[test]
    fn outputs_and_gradients_equal_the_unfolded_products() {
        let threads = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a thread pool");
        for (padding, height, width) in [([1, 1], 7, 5), ([0, 0], 6, 9), ([2, 2], 3, 4), ([1, 1], 1, 1), ([0, 1], 5, 6), ([2, 1], 4, 7), ([1, 1], 3, 131)] {
            // Channels past a multiple of the kernels' lanes and blocks, both ways.
            let (channels_in, channels_out) = (2 * LANES + 3, LANES + 1);
            let g = Geometry::new([3, channels_in, height, width], [channels_out, channels_in, 3, 3], [1, 1], padding);
            let x = values(3 * channels_in * height * width, 37);
            let weight = values(channels_out * channels_in * 9, 53);
            let grad = values(g.output_shape().iter().product(), 29);
            let (output, input_grad, weight_grad) =
                (unfolded::forward(&x, &weight, &g), unfolded::input_gradient(&weight, &grad, &g), unfolded::weight_gradient(&x, &grad, &g));
            let [mut forward_plan, mut gradient_plan] = [Plan::forward(&g), Plan::input_gradient(&g)].map(|plan| plan.expect("a Winograd plan"));
            // Two threads, so that one image per round sums two runs of rounds (two and one).
            threads.install(|| {
                in_every_width(|vectors| {
                    for images in [1, 2, 3] {
                        forward_plan.images_per_round = images;
                        gradient_plan.images_per_round = images;
                        let what = format!("padding {padding:?}, {height}x{width}, {images} images per round, {vectors}");
                        assert_close(&forward(&x, &weight, &forward_plan), &output, &format!("output, {what}"));
                        assert_close(&input_gradient(&weight, &grad, &gradient_plan), &input_grad, &format!("input gradient, {what}"));
                        assert_close(&weight_gradient(&x, &grad, &forward_plan), &weight_grad, &format!("weight gradient, {what}"));
                    }
                })
            });
        }
    }

    #[test]
    fn an_empty_batch_has_no_outputs_and_zero_weight_gradients() {
        let g = Geometry::new([0, MIN_CHANNELS, 4, 4], [MIN_CHANNELS, MIN_CHANNELS, 3, 3], [1, 1], [1, 1]);
        let plan = Plan::forward(&g).expect("a Winograd plan");
        let weight = values(MIN_CHANNELS * MIN_CHANNELS * 9, 53);
        assert!(forward(&[], &weight, &plan).is_empty());
        assert!(weight_gradient(&[], &[], &plan).iter().all(|&value| value == 0.0));
    }

    #[test]
    fn other_convolutions_are_left_unfolded() {
        let plan = |channels: usize, kernel: usize, stride: usize, padding: usize| {
            let g = Geometry::new([1, channels, 8, 8], [MIN_CHANNELS, channels, kernel, kernel], [stride; 2], [padding; 2]);
            (Plan::forward(&g).is_some(), Plan::input_gradient(&g).is_some())
        };
        assert_eq!(plan(MIN_CHANNELS, 3, 1, 1), (true, true));
        assert_eq!(plan(3, 3, 1, 1), (false, false), "few input channels");
        assert_eq!(plan(MIN_CHANNELS, 3, 2, 1), (false, false), "stride 2");
        assert_eq!(plan(MIN_CHANNELS, 1, 1, 0), (false, false), "1x1");
        assert_eq!(plan(MIN_CHANNELS, 3, 1, 3), (false, false), "padding past the kernel");
    }

    /// A benchmark, not a check: the model's 3x3 convolutions of stride 1 (each as often as
    /// it occurs) unfolded and in Winograd's form, best of 7, in ms (docs/performance.md).
    #[test]
    #[ignore]
    fn stride_one_convolutions_unfolded_against_winograd() {
        use std::time::Instant;
        println!("batch, convolution, count in the model: forward, input gradient, weight gradient (ms, unfolded / Winograd)");
        for batch in [32, 64] {
            for (channels, side, count) in [(64, 32, 4), (128, 16, 3), (256, 8, 3), (512, 4, 3)] {
                let g = Geometry::new([batch, channels, side, side], [channels, channels, 3, 3], [1, 1], [1, 1]);
                let [forward_plan, gradient_plan] = [Plan::forward(&g), Plan::input_gradient(&g)].map(|plan| plan.expect("a Winograd plan"));
                let (x, weight) = (values(batch * channels * side * side, 37), values(channels * channels * 9, 53));
                let grad = values(batch * channels * side * side, 29);
                let ops: [&dyn Fn(); 6] = [
                    &|| drop(unfolded::forward(&x, &weight, &g)),
                    &|| drop(forward(&x, &weight, &forward_plan)),
                    &|| drop(unfolded::input_gradient(&weight, &grad, &g)),
                    &|| drop(input_gradient(&weight, &grad, &gradient_plan)),
                    &|| drop(unfolded::weight_gradient(&x, &grad, &g)),
                    &|| drop(weight_gradient(&x, &grad, &forward_plan)),
                ];
                let mut best = [f64::MAX; 6];
                for _ in 0..7 {
                    for (best, op) in best.iter_mut().zip(ops) {
                        let started = Instant::now();
                        op();
                        *best = best.min(started.elapsed().as_secs_f64() * 1e3);
                    }
                }
                println!(
                    "{batch}, {channels}->{channels} {side}x{side}, x{count}: {:.1} / {:.1}, {:.1} / {:.1}, {:.1} / {:.1}",
                    best[0], best[1], best[2], best[3], best[4], best[5]
                );
            }
        }
    }
}
