//! 3x3 convolutions of stride 1 in Winograd's minimal filtering form F(4x4, 3x3) (Lavin and
//! Gray, 2016): each 4x4 block of outputs comes from a 6x6 tile of inputs with 36
//! multiplications per pair of channels instead of 144. Transformed, the convolution is 36
//! matrix products over channels, one per value of the tile; the transforms (`tile`,
//! `transforms`) are additions and multiplications by constants.
//!
//! The input gradient of such a convolution is one too (the output gradient convolved with
//! the flipped kernels, channels swapped). The weight gradient is the transpose of the
//! forward pass: the output gradient's blocks expanded to 6x6 (`A dY Aᵀ`), 36 products over
//! the tiles with the transformed input, and each 6x6 sum brought back to 3x3 (`Gᵀ dU G`).
//!
//! F(4x4, 3x3) rounds more than F(2x2, 3x3) did (its transforms multiply by up to 8 and
//! divide by 24): outputs agree with the unfolded products to about 1e-5 of their scale
//! rather than 1e-6, well inside float training's noise; the time it saves is measured in
//! docs/performance.md.

use std::ops::Range;
use std::sync::Arc;

use rayon::prelude::*;

use super::matrix::{multiply, Scratch, Sum, View};
use super::unfolded::{image_chunks, Geometry};
use tile::{BLOCK, TILE};
use transforms::{flip_kernels, gradient_row, output_planes, transform_gradient, transform_input, transform_kernels, transform_output};

mod tile;
mod transforms;

/// Channels (in or out) below which the unfolded product is kept: 36 products over the 3
/// channels of the model's first convolution are too thin to pay for the transforms.
const MIN_CHANNELS: usize = 16;

/// Tiles a convolution must have for Winograd's form: its kernels are transformed for the call
/// (162 multiply-adds per 3x3 kernel; `layer4`'s are too large to keep, `super::kept`), and each
/// tile then takes 36 per kernel against the unfolded product's 144, so one tile (a single
/// image's 4x4 plane: `layer4` in the browser) costs more than it saves, two do not.
const MIN_TILES: usize = 2;

/// Tiles up to which a call's kernel transform costs enough beside its products (at least 7 %:
/// 162 multiply-adds against 36 x 64) for kernels used again to be kept in Winograd's form: a
/// single image's from `layer1` to `layer3`.
const MAX_TILES_FOR_KEPT_KERNELS: usize = 64;

/// Transformed values one round keeps (2 MiB): the input and the products (forward pass), or
/// the input and the output gradient (weight gradient); small enough to stay in a core's
/// cache between the transforms and the products.
const ROUND_VALUES: usize = 1 << 19;

/// Tiles below which a round is not cut: the products get too narrow (forward pass) or
/// too shallow (weight gradient) for gemm. Of 32, 64, 128, 256 and 512, 64 was the fastest
/// on the model's convolutions (docs/performance.md).
const MIN_ROUND_TILES: usize = 64;

/// Transformed kernels (4 MiB) past which a call does not transform them whole: the 256- and
/// 512-channel stages' (9.4 and 37.7 MB), which went out to memory and back between their
/// transform and the products, at a cost that did not shrink with the batch. (Kernels kept
/// between calls, `super::kept`, are used whole.)
const MAX_WHOLE_KERNEL_VALUES: usize = 1 << 20;

/// The batch's transformed input (8 MiB) past which channel groups are not used: every group
/// reads all of it again, and past the last-level cache's share that is from memory (per
/// shape, groups took 1.6x the rounds' time with 18 MB, docs/performance.md).
const MAX_GROUPED_INPUT_VALUES: usize = 1 << 21;

/// Output channels whose transformed kernels a group of [`Order::ChannelGroups`] holds (1.2 MB
/// for 512 input channels).
const GROUP_CHANNELS: usize = 16;

/// How a plan's work is cut between threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    /// The kernels transformed once, then rounds of images in parallel, each through its
    /// transforms and products while they are in cache (small kernels, large planes).
    Rounds,
    /// The batch's input transformed once, then groups of output channels in parallel, each
    /// transforming its own kernels right before its products (large kernels, small planes).
    /// The weight gradient keeps its rounds, and so do kernels already transformed: there is
    /// nothing to transform, and a single image's groups made 576 products of 16 x 4 x 256
    /// (`layer3`), where gemm's cost per call outweighed its arithmetic.
    ChannelGroups,
}

/// A convolution in F(4x4, 3x3) tiles: its shapes, and how its work is cut.
pub(super) struct Plan {
    g: Geometry,
    /// Tile rows and columns per image; the last may reach past the output's edge.
    tile_grid: [usize; 2],
    order: Order,
    /// Images whose transformed values stay in cache through their transforms and products:
    /// the rounds of [`Order::Rounds`] and of the weight gradient.
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
        let tile_grid = [g.output[0].div_ceil(BLOCK), g.output[1].div_ceil(BLOCK)];
        let per_image = tile_grid[0] * tile_grid[1];
        if (1..MIN_TILES).contains(&(g.batch * per_image)) {
            return None;
        }
        let images = |count: usize| count.clamp(1, g.batch.max(1));
        let round_tiles = (ROUND_VALUES / (TILE * (g.channels_in + g.channels_out))).max(MIN_ROUND_TILES);
        let images_per_round = images(round_tiles / per_image);
        let grouped = TILE * g.channels_in * g.channels_out > MAX_WHOLE_KERNEL_VALUES && TILE * g.channels_in * g.batch * per_image <= MAX_GROUPED_INPUT_VALUES;
        let order = if grouped { Order::ChannelGroups } else { Order::Rounds };
        Some(Plan { g, tile_grid, order, images_per_round })
    }

    /// Whether kernels used again are worth keeping in Winograd's form: their transform costs at
    /// least 7 % of the products it serves ([`MAX_TILES_FOR_KEPT_KERNELS`]).
    pub(super) fn kernels_worth_keeping(&self) -> bool {
        self.g.batch * self.tiles_per_image() <= MAX_TILES_FOR_KEPT_KERNELS
    }

    /// Values of the kernels in Winograd's form.
    pub(super) fn transformed_kernel_values(&self) -> usize {
        TILE * self.g.channels_in * self.g.channels_out
    }

    fn tiles_per_image(&self) -> usize {
        self.tile_grid[0] * self.tile_grid[1]
    }
}

/// A convolution's kernels: as its weight holds them (`[channels_out][channels_in][9]`), or
/// already in Winograd's form, from [`transformed_kernels`].
#[derive(Clone, Copy)]
pub(super) enum Kernels<'a> {
    Given(&'a [f32]),
    Transformed(&'a [f32]),
}

/// `weight`'s kernels in Winograd's form, for [`forward`] to be given call after call.
pub(super) fn transformed_kernels(weight: &[f32], plan: &Plan) -> Arc<[f32]> {
    Arc::from(&*transform_kernels(weight, plan.g.channels_in))
}

/// The convolution of `x` with `kernels`, as `unfolded::forward` computes it, for the plan
/// [`Plan::forward`] made.
pub(super) fn forward(x: &[f32], kernels: Kernels, plan: &Plan) -> Vec<f32> {
    convolve(x, kernels, plan)
}

/// The input gradient, as `unfolded::input_gradient` computes it, for the plan
/// [`Plan::input_gradient`] made: kernel (o, c) of `weight` becomes kernel (c, o) of the
/// gradient's convolution, turned half a circle.
pub(super) fn input_gradient(weight: &[f32], grad: &[f32], plan: &Plan) -> Vec<f32> {
    convolve(grad, Kernels::Given(&flip_kernels(weight, plan)), plan)
}

fn convolve(x: &[f32], kernels: Kernels, plan: &Plan) -> Vec<f32> {
    let mut output = vec![0.0; plan.g.batch * plan.g.channels_out * plan.g.positions()];
    // Both orders cut the output into chunks of whole images.
    if plan.g.batch > 0 {
        match (plan.order, kernels) {
            (_, Kernels::Transformed(kernels)) => convolve_by_rounds(x, kernels, plan, &mut output),
            (Order::Rounds, Kernels::Given(weight)) => convolve_by_rounds(x, &transform_kernels(weight, plan.g.channels_in), plan, &mut output),
            (Order::ChannelGroups, Kernels::Given(weight)) => convolve_by_groups(x, weight, plan, &mut output),
        }
    }
    output
}

/// Value `value` of the transformed kernels `kernels` (`[rows][TILE][channels_in]`), a
/// matrix of rows by input channels.
fn kernel_values(kernels: &[f32], channels_in: usize, value: usize) -> View<'_> {
    View {
        values: &kernels[value * channels_in..],
        rows: kernels.len() / (TILE * channels_in),
        cols: channels_in,
        row_stride: TILE * channels_in,
        col_stride: 1,
    }
}

/// Value `value` of transformed data (`[channels][TILE][tiles]`), a matrix of channels by tiles.
fn data_values(data: &[f32], tiles: usize, value: usize) -> View<'_> {
    View { values: &data[value * tiles..], rows: data.len() / (TILE * tiles), cols: tiles, row_stride: TILE * tiles, col_stride: 1 }
}

/// The same, transposed: tiles by channels.
fn data_values_transposed(data: &[f32], tiles: usize, value: usize) -> View<'_> {
    View { values: &data[value * tiles..], rows: tiles, cols: data.len() / (TILE * tiles), row_stride: 1, col_stride: TILE * tiles }
}

/// [`Order::Rounds`]: each round's input transform, its 36 products (value v of every
/// transformed kernel against value v of every input tile) and its output transform.
fn convolve_by_rounds(x: &[f32], kernels: &[f32], plan: &Plan, output: &mut [f32]) {
    let g = &plan.g;
    let (channels_in, channels_out, per_image) = (g.channels_in, g.channels_out, plan.tiles_per_image());
    let planes = channels_out * g.positions();
    output.par_chunks_mut(plan.images_per_round * planes).enumerate().for_each(|(round, output)| {
        let first = round * plan.images_per_round;
        let images = first..first + output.len() / planes;
        let tiles = images.len() * per_image;
        let mut inputs = Scratch::take(channels_in * TILE * tiles);
        let mut products = Scratch::take(TILE * channels_out * tiles);
        transform_input(x, plan, images.clone(), &mut inputs);
        let inputs = &*inputs;
        products.par_chunks_mut(channels_out * tiles).enumerate().for_each(|(value, product)| {
            multiply(product, kernel_values(kernels, channels_in, value), data_values(inputs, tiles, value), Sum::Overwrite);
        });
        transform_output(&products, plan, images.len(), &mut output_planes(output, plan));
    });
}

/// [`Order::ChannelGroups`]: the batch's input transformed once, each group of output channels'
/// kernels transformed, multiplied and brought back to the output while they are in cache.
fn convolve_by_groups(x: &[f32], weight: &[f32], plan: &Plan, output: &mut [f32]) {
    let g = &plan.g;
    let (channels_in, tiles) = (g.channels_in, g.batch * plan.tiles_per_image());
    let mut inputs = Scratch::take(channels_in * TILE * tiles);
    transform_input(x, plan, 0..g.batch, &mut inputs);
    let inputs = &*inputs;
    let mut planes = output_planes(output, plan);
    planes.par_chunks_mut(GROUP_CHANNELS * g.batch).zip(weight.par_chunks(GROUP_CHANNELS * channels_in * 9)).for_each(|(planes, group)| {
        let group = transform_kernels(group, channels_in);
        let rows = group.len() / (TILE * channels_in);
        let mut products = Scratch::take(TILE * rows * tiles);
        for (value, product) in products.chunks_exact_mut(rows * tiles).enumerate() {
            multiply(product, kernel_values(&group, channels_in, value), data_values(inputs, tiles, value), Sum::Overwrite);
        }
        transform_output(&products, plan, g.batch, planes);
    });
}

/// The weight gradient, as `unfolded::weight_gradient` computes it, for the plan
/// [`Plan::forward`] made, always in rounds: by groups of output channels (tried), each
/// group's products re-packed the whole transformed input, and the 256-channel stage took
/// 2.4x as long (docs/performance.md). Each of at most one run of rounds per thread sums the 36
/// products, each round's transformed values while they are in cache; the runs' sums are added
/// last, so the rounding depends on the thread count.
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
                multiply(sums, data_values(grads, tiles, value), data_values_transposed(inputs, tiles, value), sum);
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

#[cfg(test)]
mod tests {
    use super::super::unfolded;
    use super::transforms::KERNEL_LANES;
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

    /// Against the unfolded products (checked term by term against the definition): sizes
    /// that leave blocks past the edge (rows and columns), paddings 0 to 2, unequal ones too,
    /// a padding past a row's length, both orders, one image per round, two (the last round
    /// short) and all, every form of the transforms' loops, runs of 8, 4, 2 and 1 tiles (of a
    /// tile row 8, 4, 2 and 33 tiles long), runs that end a round short of a group of lanes and
    /// groups that span images, and channel counts that leave the kernels' last lanes and the
    /// last group of output channels short.
    #[test]
    fn outputs_and_gradients_equal_the_unfolded_products() {
        let threads = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a thread pool");
        for (padding, height, width) in [
            ([1, 1], 7, 5),
            ([0, 0], 6, 9),
            ([2, 2], 3, 4),
            ([1, 1], 1, 1),
            // The input gradient's plan pads a row of one column by 2.
            ([0, 0], 3, 3),
            ([1, 1], 2, 5),
            ([0, 1], 5, 6),
            ([2, 1], 4, 7),
            ([1, 1], 6, 16),
            ([1, 1], 3, 16),
            ([1, 1], 6, 14),
            ([1, 1], 5, 32),
            ([1, 1], 5, 30),
            ([0, 2], 5, 28),
            ([1, 1], 3, 131),
        ] {
            // Channels past a multiple of the kernels' lanes and of the groups of output channels,
            // both ways (the input gradient swaps them).
            let (channels_in, channels_out) = (2 * KERNEL_LANES.max(GROUP_CHANNELS) + 3, GROUP_CHANNELS.min(KERNEL_LANES) + 1);
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
                    // The weight gradient, and kernels already transformed, take rounds in
                    // either order.
                    for (order, images) in [(Order::Rounds, 1), (Order::Rounds, 2), (Order::Rounds, 3), (Order::ChannelGroups, 1)] {
                        for plan in [&mut forward_plan, &mut gradient_plan] {
                            (plan.order, plan.images_per_round) = (order, images);
                        }
                        let what = format!("padding {padding:?}, {height}x{width}, {order:?}, {images} images per round, {vectors}");
                        let transformed = transformed_kernels(&weight, &forward_plan);
                        for (kernels, form) in [(Kernels::Given(&weight), "given"), (Kernels::Transformed(&transformed), "transformed")] {
                            assert_close(&forward(&x, kernels, &forward_plan), &output, &format!("output, kernels {form}, {what}"));
                        }
                        assert_close(&input_gradient(&weight, &grad, &gradient_plan), &input_grad, &format!("input gradient, {what}"));
                        assert_close(&weight_gradient(&x, &grad, &forward_plan), &weight_grad, &format!("weight gradient, {what}"));
                    }
                })
            });
        }
    }

    #[test]
    fn an_empty_batch_has_no_outputs_and_zero_weight_gradients() {
        let g = Geometry::new([0, MIN_CHANNELS, 8, 8], [MIN_CHANNELS, MIN_CHANNELS, 3, 3], [1, 1], [1, 1]);
        let [mut forward_plan, mut gradient_plan] = [Plan::forward(&g), Plan::input_gradient(&g)].map(|plan| plan.expect("a Winograd plan"));
        let weight = values(MIN_CHANNELS * MIN_CHANNELS * 9, 53);
        for order in [Order::Rounds, Order::ChannelGroups] {
            (forward_plan.order, gradient_plan.order) = (order, order);
            assert!(forward(&[], Kernels::Given(&weight), &forward_plan).is_empty(), "{order:?}");
            assert!(input_gradient(&weight, &[], &gradient_plan).is_empty(), "{order:?}");
            assert!(weight_gradient(&[], &[], &forward_plan).iter().all(|&value| value == 0.0), "{order:?}");
        }
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
        let tiles = |batch: usize, side: usize| {
            Plan::forward(&Geometry::new([batch, MIN_CHANNELS, side, side], [MIN_CHANNELS, MIN_CHANNELS, 3, 3], [1, 1], [1, 1])).is_some()
        };
        assert!(!tiles(1, 4), "one tile");
        assert!(tiles(2, 4), "two tiles");
        assert!(tiles(1, 5), "four tiles, one image");
    }

    #[test]
    fn kernels_are_worth_keeping_up_to_64_tiles() {
        let worth = |batch: usize, height: usize, width: usize| {
            let g = Geometry::new([batch, MIN_CHANNELS, height, width], [MIN_CHANNELS, MIN_CHANNELS, 3, 3], [1, 1], [1, 1]);
            Plan::forward(&g).expect("a Winograd plan").kernels_worth_keeping()
        };
        assert!(worth(1, 32, 32), "an 8x8 grid of tiles: layer1's single image");
        assert!(worth(64, 4, 4), "64 images of one tile");
        assert!(!worth(1, 32, 33), "72 tiles");
        assert!(!worth(2, 32, 32), "128 tiles");
    }

    /// Channel groups for the kernels that are not kept whole, while the batch's transformed
    /// input is small enough to be read again by every group.
    #[test]
    fn large_kernels_are_transformed_by_groups_for_small_batches() {
        let order = |batch: usize, channels: usize, side: usize| {
            let g = Geometry::new([batch, channels, side, side], [channels, channels, 3, 3], [1, 1], [1, 1]);
            Plan::forward(&g).expect("a Winograd plan").order
        };
        assert_eq!(order(32, 64, 32), Order::Rounds, "small kernels");
        assert_eq!(order(32, 128, 16), Order::Rounds, "small kernels");
        assert_eq!(order(32, 256, 8), Order::ChannelGroups);
        assert_eq!(order(64, 256, 8), Order::Rounds, "a batch's input past the cache");
        assert_eq!(order(64, 512, 4), Order::ChannelGroups);
        assert_eq!(order(250, 512, 4), Order::Rounds, "a batch's input past the cache");
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
                    &|| drop(forward(&x, Kernels::Given(&weight), &forward_plan)),
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
