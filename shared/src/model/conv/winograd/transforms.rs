//! Winograd's transforms of kernels, inputs, output gradients and products, a row of kernels
//! or a channel's planes at a time in parallel, each in the CPU's widest vectors.

use std::ops::Range;

use rayon::prelude::*;

use super::super::matrix::Scratch;
use super::tile::{both_sides, gradient_side, input_side, kernel_gradient_side, kernel_side, output_side, Lanes, BLOCK, SIDE, TILE};
use super::Plan;
use crate::model::wide::wide_fn;

/// Kernels transformed at once, one per vector lane (an AVX-512 vector holds 16 f32).
pub(super) const KERNEL_LANES: usize = 16;

/// Tiles transformed at once, one per vector lane (an AVX2 vector): a 32x32 plane's tile row,
/// or the runs of several rows and images that smaller planes give.
const RUN: usize = 8;

/// Every 3x3 kernel `k` of `weights` (`[rows][channels_in][9]`, all of a convolution's output
/// channels or a group of them) as `G k Gᵀ`, laid out `[rows][TILE][channels_in]`.
pub(super) fn transform_kernels(weights: &[f32], channels_in: usize) -> Scratch {
    let mut kernels = Scratch::take(weights.len() / 9 * TILE);
    kernels.par_chunks_mut(TILE * channels_in).zip(weights.par_chunks(channels_in * 9)).for_each(|(out, row)| kernel_row(row, out));
    kernels
}

wide_fn! {
    /// [`transform_kernels`] of one output channel: `out[value][c]` from `kernels[c][9]`.
    fn kernel_row(kernels: &[f32], out: &mut [f32]) {
        let channels = kernels.len() / 9;
        for first in (0..channels).step_by(KERNEL_LANES) {
            let lanes = KERNEL_LANES.min(channels - first);
            // Tap by lane, so that the transform runs on every lane at once.
            let mut taps = [[0.0; KERNEL_LANES]; 9];
            for (lane, kernel) in kernels[first * 9..][..lanes * 9].chunks_exact(9).enumerate() {
                for (tap, &value) in kernel.iter().enumerate() {
                    taps[tap][lane] = value;
                }
            }
            let mut tile = [[Lanes(taps[0]); 3]; 3];
            for (row, taps) in tile.iter_mut().zip(taps.chunks_exact(3)) {
                for (value, tap) in row.iter_mut().zip(taps) {
                    *value = Lanes(*tap);
                }
            }
            let tile = both_sides(tile, kernel_side);
            for (value, transformed) in tile.iter().flatten().enumerate() {
                transformed.store(&mut out[value * channels + first..], lanes);
            }
        }
    }
}

wide_fn! {
    /// The weight gradient's kernels of output channel `o`, `out[c][9]`, from the sums
    /// `[TILE][channels_out][channels_in]`: `Gᵀ u G` of each.
    pub(super) fn gradient_row(sums: &[f32], o: usize, channels_out: usize, out: &mut [f32]) {
        let channels_in = out.len() / 9;
        for first in (0..channels_in).step_by(KERNEL_LANES) {
            let lanes = KERNEL_LANES.min(channels_in - first);
            let mut tile = [[Lanes([0.0; KERNEL_LANES]); SIDE]; SIDE];
            for (i, row) in tile.iter_mut().enumerate() {
                for (j, value) in row.iter_mut().enumerate() {
                    *value = Lanes::load(&sums[((SIDE * i + j) * channels_out + o) * channels_in + first..]);
                }
            }
            let kernel = both_sides(tile, kernel_gradient_side);
            for (lane, out) in out[first * 9..][..lanes * 9].chunks_exact_mut(9).enumerate() {
                for (tap, value) in out.iter_mut().zip(kernel.iter().flatten()) {
                    *tap = value.0[lane];
                }
            }
        }
    }
}

/// The input gradient's kernels, `[c][o][9]` for the plan [`Plan::input_gradient`] made: kernel
/// (o, c) of `weight` as kernel (c, o), turned half a circle. In blocks of rows, as reading
/// `weight` down its columns one kernel at a time, a page apart, missed the cache.
pub(super) fn flip_kernels(weight: &[f32], plan: &Plan) -> Scratch {
    /// Rows written at once, reading each output channel's kernels in runs of this many.
    const FLIP_ROWS: usize = 16;
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

/// The line `row`, `padding` zeros before it and zeros past it, split by column modulo 4:
/// `split[p][k]` is column `4k + p` of the padded line (`span` of each), so that a tile's
/// column j is `split[j mod 4][t + j div 4]`, t the tile's column in the grid. The quads of
/// columns within the row are copied as they are, the edges' column by column.
#[inline(always)]
fn split_row(row: &[f32], padding: usize, split: &mut [f32], span: usize) {
    let (first, rest) = split.split_at_mut(span);
    let (second, rest) = rest.split_at_mut(span);
    let (third, fourth) = rest.split_at_mut(span);
    let column = |j: usize| j.checked_sub(padding).and_then(|x| row.get(x)).copied().unwrap_or(0.0);
    // Quads k in start..end have columns 4k..4k + 4 all within the row (none if end = start).
    let start = padding.div_ceil(BLOCK);
    let end = ((row.len() + padding) / BLOCK).clamp(start, span);
    for k in (0..start).chain(end..span) {
        let j = BLOCK * k;
        (first[k], second[k], third[k], fourth[k]) = (column(j), column(j + 1), column(j + 2), column(j + 3));
    }
    if start < end {
        let quads = row[BLOCK * start - padding..].chunks_exact(BLOCK);
        let columns = first[start..end].iter_mut().zip(&mut second[start..end]).zip(&mut third[start..end]).zip(&mut fourth[start..end]);
        for (quad, (((first, second), third), fourth)) in quads.zip(columns) {
            (*first, *second, *third, *fourth) = (quad[0], quad[1], quad[2], quad[3]);
        }
    }
}

/// Values per column class of a split line ([`split_row`]): a tile row's blocks and the
/// last tile's reach past them.
fn span(plan: &Plan) -> usize {
    plan.tile_grid[1] + 1
}

/// One channel's planes of the images transformed together, `lines` padded lines each, split by
/// [`split_row`], for the tiles [`Split::transform`] reads.
struct Split<'a> {
    values: &'a [f32],
    grid: [usize; 2],
    lines: usize,
    span: usize,
}

impl<'a> Split<'a> {
    /// `planes` (`size` each) into `buffer`, each with `lines` lines from `padding[0]` before
    /// its first, `padding[1]` columns before its first, zero elsewhere.
    #[inline(always)]
    fn of<'p>(planes: impl Iterator<Item = &'p [f32]>, size: [usize; 2], padding: [usize; 2], plan: &Plan, lines: usize, buffer: &'a mut [f32]) -> Self {
        let (grid, span) = (plan.tile_grid, span(plan));
        for (plane, split) in planes.zip(buffer.chunks_exact_mut(lines * BLOCK * span)) {
            for (line, split) in split.chunks_exact_mut(BLOCK * span).enumerate() {
                match line.checked_sub(padding[0]).filter(|&y| y < size[0]) {
                    Some(y) => split_row(&plane[y * size[1]..][..size[1]], padding[1], split, span),
                    None => split.fill(0.0),
                }
            }
        }
        Split { values: buffer, grid, lines, span }
    }

    /// The values a buffer for [`Split::of`] holds.
    fn buffer_len(plan: &Plan, images: usize, lines: usize) -> usize {
        images * lines * BLOCK * span(plan)
    }

    /// `F d Fᵀ` of every `N`x`N` tile d (starting at every fourth line and column), `f`
    /// multiplying a column by F, into `out[value][tile]`, tiles by image, tile row and tile
    /// column; [`RUN`] tiles at once, read in runs of the `S` of a tile row that follow each
    /// other (`S` divides the grid's columns and `RUN`).
    #[inline(always)]
    fn transform<const N: usize, const S: usize>(&self, f: impl Fn([Lanes<RUN>; N]) -> [Lanes<RUN>; SIDE], out: &mut [f32]) {
        const { assert!(RUN.is_multiple_of(S), "runs fill the lanes") };
        let ([rows, cols], span) = (self.grid, self.span);
        let tiles = out.len() / TILE;
        for first in (0..tiles).step_by(RUN) {
            // Where each run's first tile starts (any tile past the last).
            let mut starts = [0; RUN];
            for (run, start) in starts.iter_mut().enumerate().take(RUN / S) {
                let tile = first + run * S;
                if tile < tiles {
                    let (image, ty, tx) = (tile / (rows * cols), tile / cols % rows, tile % cols);
                    *start = (image * self.lines + BLOCK * ty) * BLOCK * span + tx;
                }
            }
            let mut tile = [[Lanes([0.0; RUN]); N]; N];
            for (i, row) in tile.iter_mut().enumerate() {
                for (j, value) in row.iter_mut().enumerate() {
                    *value = self.gather::<S>(&starts, (i * BLOCK + j % BLOCK) * span + j / BLOCK);
                }
            }
            for (value, transformed) in both_sides(tile, &f).iter().flatten().enumerate() {
                transformed.store(&mut out[value * tiles + first..], RUN.min(tiles - first));
            }
        }
    }

    /// The values `offset` past each run's start.
    #[inline(always)]
    fn gather<const S: usize>(&self, starts: &[usize; RUN], offset: usize) -> Lanes<RUN> {
        let mut lanes = [0.0; RUN];
        for (run, lanes) in lanes.chunks_exact_mut(S).enumerate() {
            lanes.copy_from_slice(&self.values[starts[run] + offset..][..S]);
        }
        Lanes(lanes)
    }
}

/// The tiles a run of [`Split::transform`] and [`output_runs`] takes: the most of a tile
/// row's that divides it.
fn run_of(plan: &Plan) -> usize {
    [RUN, 4, 2].into_iter().find(|&run| plan.tile_grid[1].is_multiple_of(run)).unwrap_or(1)
}

/// `$body` with the constant `$run` set to [`run_of`] the plan: each run length gets a loop of
/// its own, with copies of a fixed length.
macro_rules! with_run {
    ($plan:expr, $run:ident => $body:expr) => {
        match run_of($plan) {
            RUN => {
                const $run: usize = RUN;
                $body
            }
            4 => {
                const $run: usize = 4;
                $body
            }
            2 => {
                const $run: usize = 2;
                $body
            }
            _ => {
                const $run: usize = 1;
                $body
            }
        }
    };
}

/// A buffer for [`Split::of`]: NaN in tests, so that reading a value it did not write fails
/// them.
fn split_buffer(plan: &Plan, images: usize, lines: usize) -> Vec<f32> {
    vec![if cfg!(test) { f32::NAN } else { 0.0 }; Split::buffer_len(plan, images, lines)]
}

/// Lines of an image's padded plane that the input's tiles read: the blocks' and the kernel's
/// reach past the last.
fn input_lines(plan: &Plan) -> usize {
    BLOCK * plan.tile_grid[0] + 2
}

/// Lines of an image's output gradient that its blocks read, past its edge included.
fn gradient_lines(plan: &Plan) -> usize {
    BLOCK * plan.tile_grid[0]
}

/// `Bᵀ d B` of every 6x6 input tile d of `images`, laid out `[channels_in][TILE][tiles]`, tiles
/// by image, tile row and tile column. Tiles start at every fourth row and column, `padding`
/// before the input; values outside it are zero.
pub(super) fn transform_input(x: &[f32], plan: &Plan, images: Range<usize>, out: &mut [f32]) {
    let tiles = images.len() * plan.tiles_per_image();
    out.par_chunks_mut(TILE * tiles).enumerate().for_each_init(
        || split_buffer(plan, images.len(), input_lines(plan)),
        |buffer, (channel, out)| input_channel(x, plan, images.clone(), channel, buffer, out),
    );
}

wide_fn! {
    /// [`transform_input`] of one channel.
    fn input_channel(x: &[f32], plan: &Plan, images: Range<usize>, channel: usize, buffer: &mut [f32], out: &mut [f32]) {
        let g = &plan.g;
        let planes = images.map(|image| &x[(image * g.channels_in + channel) * g.plane()..][..g.plane()]);
        let split = Split::of(planes, g.input, g.padding, plan, input_lines(plan), buffer);
        with_run!(plan, S => split.transform::<SIDE, S>(input_side, out))
    }
}

/// `A y Aᵀ` of every 4x4 block y of the output gradient of `images` (zero past the output's
/// edge), the transpose of [`transform_output`], laid out `[channels_out][TILE][tiles]`.
pub(super) fn transform_gradient(grad: &[f32], plan: &Plan, images: Range<usize>, out: &mut [f32]) {
    let tiles = images.len() * plan.tiles_per_image();
    out.par_chunks_mut(TILE * tiles).enumerate().for_each_init(
        || split_buffer(plan, images.len(), gradient_lines(plan)),
        |buffer, (o, out)| gradient_channel(grad, plan, images.clone(), o, buffer, out),
    );
}

wide_fn! {
    /// [`transform_gradient`] of output channel `o`.
    fn gradient_channel(grad: &[f32], plan: &Plan, images: Range<usize>, o: usize, buffer: &mut [f32], out: &mut [f32]) {
        let g = &plan.g;
        let planes = images.map(|image| &grad[(image * g.channels_out + o) * g.positions()..][..g.positions()]);
        let split = Split::of(planes, g.output, [0, 0], plan, gradient_lines(plan), buffer);
        with_run!(plan, S => split.transform::<BLOCK, S>(gradient_side, out))
    }
}

/// The output planes of `out`'s images by output channel, then image, for
/// [`transform_output`]: each channel's planes of every image together.
pub(super) fn output_planes<'o>(out: &'o mut [f32], plan: &Plan) -> Vec<&'o mut [f32]> {
    let (channels_out, positions) = (plan.g.channels_out, plan.g.positions());
    let mut images: Vec<_> = out.chunks_mut(channels_out * positions).map(|image| image.chunks_mut(positions)).collect();
    let mut planes = Vec::with_capacity(channels_out * images.len());
    for _ in 0..channels_out {
        planes.extend(images.iter_mut().map(|image| image.next().expect("a plane per output channel")));
    }
    planes
}

/// `Aᵀ m A` of every transformed product tile m (`products`, `[TILE][channels][tiles]`) into the
/// output planes of those channels of `images` images (`planes`, by channel, then image, as
/// [`output_planes`] gives them); a block's rows and columns past the output's edge are dropped.
pub(super) fn transform_output(products: &[f32], plan: &Plan, images: usize, planes: &mut [&mut [f32]]) {
    let channels = planes.len() / images;
    planes.par_chunks_mut(images).enumerate().for_each(|(o, planes)| output_channel(products, plan, channels, o, planes));
}

wide_fn! {
    /// [`transform_output`] of the products' channel `o`, into its `planes`.
    fn output_channel(products: &[f32], plan: &Plan, channels: usize, o: usize, planes: &mut [&mut [f32]]) {
        with_run!(plan, S => output_runs::<S>(products, plan, channels, o, planes))
    }
}

/// [`output_channel`], [`RUN`] tiles at once, written in runs of the `S` of a tile row
/// that follow each other (`S` divides the grid's columns and `RUN`).
#[inline(always)]
fn output_runs<const S: usize>(products: &[f32], plan: &Plan, channels: usize, o: usize, planes: &mut [&mut [f32]]) {
    const { assert!(RUN.is_multiple_of(S), "runs fill the lanes") };
    let ([rows, cols], [height, width]) = (plan.tile_grid, plan.g.output);
    let tiles = planes.len() * rows * cols;
    for first in (0..tiles).step_by(RUN) {
        let value = |i: usize, j: usize| ((SIDE * i + j) * channels + o) * tiles + first;
        // `from_fn` here, unlike the other transforms' loops: the output transform ran 3-5 %
        // faster with it (per-shape bench, docs/performance.md).
        let tile: [[Lanes<RUN>; SIDE]; SIDE] = std::array::from_fn(|i| std::array::from_fn(|j| Lanes::load(&products[value(i, j)..])));
        let block = both_sides(tile, output_side);
        for run in 0..(tiles - first).min(RUN).div_ceil(S) {
            let tile = first + run * S;
            let (image, ty, tx) = (tile / (rows * cols), tile / cols % rows, tile % cols);
            let (x, plane) = (BLOCK * tx, &mut *planes[image]);
            for (r, row) in block.iter().enumerate().take(height - BLOCK * ty) {
                // The run's outputs of row r, blocks side by side.
                let mut line = [0.0; BLOCK * RUN];
                for (outputs, lane) in line.chunks_exact_mut(BLOCK).zip(run * S..(run + 1) * S) {
                    for (output, column) in outputs.iter_mut().zip(row) {
                        *output = column.0[lane];
                    }
                }
                let out = &mut plane[(BLOCK * ty + r) * width + x..];
                if x + BLOCK * S <= width {
                    out[..BLOCK * S].copy_from_slice(&line[..BLOCK * S]);
                } else {
                    out[..width - x].copy_from_slice(&line[..width - x]);
                }
            }
        }
    }
}
