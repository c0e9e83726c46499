//! The model's convolutions: Burn's, except on the server's CPU backend.
//!
//! Flex runs convolutions as many narrow matrix products (for the weight gradient, one
//! 9-wide product per input channel), most of a CPU training step (docs/performance.md).
//! With the `flex-kernels` feature, Flex and `Autodiff<Flex>` get the forward pass and both
//! gradients as wide products of the unfolded input instead; other backends and the browser
//! keep Burn's (see `super::flex`).

use burn::nn::conv::Conv2d;
use burn::prelude::*;

/// `conv` applied to `x`, as `conv.forward(x)` computes it.
pub(crate) fn convolve<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    #[cfg(feature = "flex-kernels")]
    let x = match flex::convolve(conv, x) {
        Ok(output) => return output,
        Err(x) => x,
    };
    conv.forward(x)
}

#[cfg(feature = "flex-kernels")]
mod flex {
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::autodiff::NodeId;
    use burn::backend::flex::FlexTensor;
    use burn::backend::Flex;
    use burn::nn::conv::Conv2d;
    use burn::nn::PaddingConfig2d;
    use burn::prelude::*;
    use burn::tensor::ops::{ConvOptions, FloatTensor, ModuleOps};
    use burn::tensor::{DType, TensorData, TensorPrimitive};

    use super::super::flex::{cast, OnFlex, Training};
    use super::unfolded::{self, Geometry};

    /// `Ok` with the output when `B` is Flex or `Autodiff<Flex>` and the convolution is a
    /// plain one (no bias, groups or dilation, symmetric padding) that fits `x`, else `Err`
    /// with `x`.
    pub(super) fn convolve<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
        let padding = match conv.padding {
            PaddingConfig2d::Valid => [0, 0],
            PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => [top, left],
            _ => return Err(x),
        };
        let [_, channels, height, width] = x.dims();
        let [_, weight_channels, kernel_height, kernel_width] = conv.weight.dims();
        let fits = kernel_height <= height + 2 * padding[0] && kernel_width <= width + 2 * padding[1];
        // Anything else, mismatched shapes included, is Burn's to compute or to refuse.
        if conv.bias.is_some() || conv.groups != 1 || conv.dilation != [1, 1] || conv.stride.contains(&0) || channels != weight_channels || !fits {
            return Err(x);
        }
        let options = ConvOptions::new(conv.stride, padding, [1, 1], 1);
        match OnFlex::of::<B>() {
            Some(OnFlex::Training) => {
                let [x, weight] = [x, conv.weight.val()].map(|t| cast::<B, Training, 4>(t).into_primitive().tensor());
                Ok(cast(Tensor::<Training, 4>::from_primitive(TensorPrimitive::Float(conv2d_tracked(x, weight, options)))))
            }
            Some(OnFlex::Plain) => {
                let [x, weight] = [x, conv.weight.val()].map(|t| cast::<B, Flex, 4>(t).into_primitive().tensor());
                Ok(cast(Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(conv2d(&x, &weight, &options)))))
            }
            None => Err(x),
        }
    }

    /// Burn's autodiff convolution, with this module's forward pass and gradients.
    fn conv2d_tracked(x: FloatTensor<Training>, weight: FloatTensor<Training>, options: ConvOptions<2>) -> FloatTensor<Training> {
        match Convolution.prepare::<NoCheckpointing>([x.node.clone(), weight.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&weight), options.clone());
                prep.finish(state, conv2d(&x.primitive, &weight.primitive, &options))
            }
            OpsKind::UnTracked(prep) => prep.finish(conv2d(&x.primitive, &weight.primitive, &options)),
        }
    }

    #[derive(Debug)]
    struct Convolution;

    impl Backward<Flex, 2> for Convolution {
        type State = (NodeId, NodeId, ConvOptions<2>);

        fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
            let [node_x, node_weight] = ops.parents;
            let grad = grads.consume::<Flex>(&ops.node);
            let (x_state, weight_state, options) = ops.state;
            let x = checkpointer.retrieve_node_output::<FlexTensor>(x_state);
            let weight = checkpointer.retrieve_node_output::<FlexTensor>(weight_state);
            if let Some(node) = node_x {
                grads.register::<Flex>(node.id, input_gradient(&x, &weight, &grad, &options));
            }
            if let Some(node) = node_weight {
                grads.register::<Flex>(node.id, weight_gradient(&x, &weight, &grad, &options));
            }
        }
    }

    fn geometry(x: &FlexTensor, weight: &FlexTensor, options: &ConvOptions<2>) -> Geometry {
        Geometry::new(x.layout().shape().dims(), weight.layout().shape().dims(), options.stride, options.padding)
    }

    fn all_f32(tensors: &[&FlexTensor]) -> bool {
        tensors.iter().all(|t| t.dtype() == DType::F32)
    }

    /// `op` on the values of `tensors`, contiguous.
    fn on_values<const N: usize>(tensors: [&FlexTensor; N], op: impl FnOnce([&[f32]; N]) -> Vec<f32>) -> Vec<f32> {
        let contiguous = tensors.map(FlexTensor::to_contiguous);
        op(contiguous.each_ref().map(|t| t.as_slice().expect("contiguous f32")))
    }

    fn tensor(values: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(values, shape))
    }

    fn conv2d(x: &FlexTensor, weight: &FlexTensor, options: &ConvOptions<2>) -> FlexTensor {
        if !all_f32(&[x, weight]) {
            return Flex::conv2d(x.clone(), weight.clone(), None, options.clone());
        }
        let geometry = geometry(x, weight, options);
        let values = on_values([x, weight], |[x, weight]| unfolded::forward(x, weight, &geometry));
        tensor(values, geometry.output_shape())
    }

    fn input_gradient(x: &FlexTensor, weight: &FlexTensor, grad: &FlexTensor, options: &ConvOptions<2>) -> FlexTensor {
        if !all_f32(&[x, weight, grad]) {
            return Flex::conv2d_x_backward(x.clone(), weight.clone(), grad.clone(), options.clone());
        }
        let geometry = geometry(x, weight, options);
        let values = on_values([weight, grad], |[weight, grad]| unfolded::input_gradient(weight, grad, &geometry));
        tensor(values, x.layout().shape().dims())
    }

    fn weight_gradient(x: &FlexTensor, weight: &FlexTensor, grad: &FlexTensor, options: &ConvOptions<2>) -> FlexTensor {
        if !all_f32(&[x, weight, grad]) {
            return Flex::conv2d_weight_backward(x.clone(), weight.clone(), grad.clone(), options.clone());
        }
        let geometry = geometry(x, weight, options);
        let values = on_values([x, grad], |[x, grad]| unfolded::weight_gradient(x, grad, &geometry));
        tensor(values, weight.layout().shape().dims())
    }

    #[cfg(test)]
    mod tests {
        use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
        use burn::backend::Autodiff;
        use burn::nn::conv::Conv2dConfig;
        use burn::tensor::Distribution;

        use super::*;

        fn plain<B: Backend>(channels: usize, kernel: usize, stride: usize, padding: usize) -> Conv2d<B> {
            Conv2dConfig::new([channels, 7], [kernel, kernel])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(padding, padding, padding, padding))
                .with_bias(false)
                .init(&Default::default())
        }

        fn assert_close<const D: usize>(ours: Tensor<Flex, D>, burns: Tensor<Flex, D>, what: &str) {
            let scale = burns.clone().abs().max().into_scalar();
            let error = (ours - burns).abs().max().into_scalar();
            assert!(error <= 1e-5 * scale, "{what}: error {error} of {scale}");
        }

        type Forward = fn(&Conv2d<Training>, Tensor<Training, 4>) -> Tensor<Training, 4>;

        fn ours(conv: &Conv2d<Training>, x: Tensor<Training, 4>) -> Tensor<Training, 4> {
            convolve(conv, x).expect("a plain convolution on Training")
        }

        /// The output and the gradients of the input and the weight, for a fixed upstream gradient.
        fn run(conv: &Conv2d<Training>, x: Tensor<Training, 4>, upstream: Tensor<Training, 4>, forward: Forward) -> [Tensor<Flex, 4>; 3] {
            let x = x.require_grad();
            let output = forward(conv, x.clone());
            let grads = (output.clone() * upstream).sum().backward();
            [output.inner(), x.grad(&grads).expect("x grad"), conv.weight.val().grad(&grads).expect("weight grad")]
        }

        // Odd sizes, strides 1 and 2, 3x3 padded and 1x1 unpadded, as in ResNet18.
        const CASES: [(usize, usize, usize, usize, usize); 4] = [(3, 3, 1, 1, 9), (5, 3, 2, 1, 11), (4, 1, 2, 0, 7), (6, 3, 1, 0, 6)];

        #[test]
        fn training_outputs_and_gradients_equal_burns() {
            let device = Default::default();
            for (channels, kernel, stride, padding, side) in CASES {
                let conv = plain::<Training>(channels, kernel, stride, padding);
                let x = Tensor::<Training, 4>::random([3, channels, side, side + 2], Distribution::Normal(0.0, 1.0), &device);
                let upstream = Tensor::random(conv.forward(x.clone()).dims(), Distribution::Normal(0.0, 1.0), &device);
                let ours = run(&conv, x.clone(), upstream.clone(), ours);
                let burns = run(&conv, x, upstream, Conv2d::forward);
                for ((ours, burns), what) in ours.into_iter().zip(burns).zip(["output", "input gradient", "weight gradient"]) {
                    assert_close(ours, burns, &format!("{what}, {channels} channels, {kernel}x{kernel} stride {stride}"));
                }
            }
        }

        #[test]
        fn one_sided_gradients_equal_burns() {
            // The importance pass tracks only weights; the model's first convolution gets an
            // untracked input.
            let device = Default::default();
            let conv = plain::<Training>(5, 3, 2, 1);
            let x = Tensor::<Training, 4>::random([2, 5, 9, 8], Distribution::Normal(0.0, 1.0), &device);
            let upstream = Tensor::<Training, 4>::random(conv.forward(x.clone()).dims(), Distribution::Normal(0.0, 1.0), &device);
            let weight_gradient = |forward: Forward| {
                let grads = (forward(&conv, x.clone()) * upstream.clone()).sum().backward();
                conv.weight.val().grad(&grads).expect("weight grad")
            };
            assert_close(weight_gradient(ours), weight_gradient(Conv2d::forward), "weight gradient, untracked input");
            let frozen = conv.clone().no_grad();
            let input_gradient = |forward: Forward| {
                let x = x.clone().require_grad();
                let grads = (forward(&frozen, x.clone()) * upstream.clone()).sum().backward();
                x.grad(&grads).expect("x grad")
            };
            assert_close(input_gradient(ours), input_gradient(Conv2d::forward), "input gradient, untracked weight");
        }

        #[test]
        fn inference_outputs_equal_burns() {
            let device = Default::default();
            for (channels, kernel, stride, padding, side) in CASES {
                let conv = plain::<Flex>(channels, kernel, stride, padding);
                let x = Tensor::<Flex, 4>::random([2, channels, side + 1, side], Distribution::Normal(0.0, 1.0), &device);
                let ours = convolve(&conv, x.clone()).expect("a plain convolution on Flex");
                assert_close(ours, conv.forward(x), &format!("{channels} channels, {kernel}x{kernel} stride {stride}"));
            }
        }

        /// A benchmark, not a check: each of ResNet18's convolution shapes at batches 32 and 64,
        /// Flex's operation against this module's, in ms (docs/performance.md).
        #[test]
        #[ignore]
        fn resnet18_convolutions_against_flex() {
            use std::time::Instant;
            let device = Default::default();
            let random = |shape: [usize; 4]| Tensor::<Flex, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device).into_primitive().tensor();
            let time = |op: &dyn Fn()| {
                op();
                let started = Instant::now();
                (0..3).for_each(|_| op());
                started.elapsed().as_secs_f64() / 3.0 * 1e3
            };
            println!("batch, convolution, count in the model: forward, input gradient, weight gradient (ms, Flex / ours)");
            for batch in [32, 64] {
                let mut model = [0.0; 6];
                // (input channels, output channels, input side, kernel, stride, count in ResNet18)
                for (channels, out, side, kernel, stride, count) in [
                    (3, 64, 32, 3, 1, 1),
                    (64, 64, 32, 3, 1, 4),
                    (64, 128, 32, 3, 2, 1),
                    (128, 128, 16, 3, 1, 3),
                    (64, 128, 32, 1, 2, 1),
                    (128, 256, 16, 3, 2, 1),
                    (256, 256, 8, 3, 1, 3),
                    (128, 256, 16, 1, 2, 1),
                    (256, 512, 8, 3, 2, 1),
                    (512, 512, 4, 3, 1, 3),
                    (256, 512, 8, 1, 2, 1),
                ] {
                    let padding = kernel / 2;
                    let options = ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1);
                    let out_side = (side + 2 * padding - kernel) / stride + 1;
                    let (x, weight, grad) =
                        (random([batch, channels, side, side]), random([out, channels, kernel, kernel]), random([batch, out, out_side, out_side]));
                    let timings = [
                        time(&|| drop(Flex::conv2d(x.clone(), weight.clone(), None, options.clone()))),
                        time(&|| drop(conv2d(&x, &weight, &options))),
                        time(&|| drop(Flex::conv2d_x_backward(x.clone(), weight.clone(), grad.clone(), options.clone()))),
                        time(&|| drop(input_gradient(&x, &weight, &grad, &options))),
                        time(&|| drop(Flex::conv2d_weight_backward(x.clone(), weight.clone(), grad.clone(), options.clone()))),
                        time(&|| drop(weight_gradient(&x, &weight, &grad, &options))),
                    ];
                    println!(
                        "{batch}, {channels}->{out} {side}x{side} {kernel}x{kernel}/{stride}, x{count}: {:.1} / {:.1}, {:.1} / {:.1}, {:.1} / {:.1}",
                        timings[0], timings[1], timings[2], timings[3], timings[4], timings[5]
                    );
                    model.iter_mut().zip(timings).for_each(|(sum, ms)| *sum += ms * count as f64);
                }
                println!(
                    "{batch}, the model's 20 convolutions: {:.0} / {:.0}, {:.0} / {:.0}, {:.0} / {:.0}",
                    model[0], model[1], model[2], model[3], model[4], model[5]
                );
            }
        }

        #[test]
        fn other_backends_and_convolutions_are_left_to_burn() {
            fn x<B: Backend>() -> Tensor<B, 4> {
                Tensor::zeros([1, 2, 5, 5], &Default::default())
            }
            assert!(convolve(&plain::<Autodiff<Flex, BalancedCheckpointing>>(2, 3, 1, 1), x()).is_err(), "another backend");
            assert!(convolve(&Conv2dConfig::new([2, 2], [3, 3]).init::<Training>(&Default::default()), x()).is_err(), "with a bias");
            assert!(convolve(&Conv2dConfig::new([2, 2], [3, 3]).with_groups(2).with_bias(false).init::<Flex>(&Default::default()), x()).is_err(), "grouped");
            assert!(convolve(&plain::<Flex>(2, 3, 1, 0), Tensor::zeros([1, 2, 2, 5], &Default::default())).is_err(), "a kernel taller than the input");
            assert!(convolve(&plain::<Flex>(3, 3, 1, 1), x()).is_err(), "channels that do not match");
        }
    }
}

/// Convolutions as wide matrix products of the unfolded input, on plain slices.
#[cfg(feature = "flex-kernels")]
mod unfolded {
    use std::cell::RefCell;
    use std::ops::{Deref, DerefMut, Range};

    use gemm::{gemm, Parallelism};
    use rayon::prelude::*;

    /// Values one scratch buffer (the unfolded input, a product's output) holds at once
    /// (32 MiB): images are taken in chunks that fit.
    const SCRATCH_VALUES: usize = 8 << 20;

    /// A plain convolution's shapes (no groups or dilation), and how many images one
    /// matrix product takes.
    pub(super) struct Geometry {
        batch: usize,
        channels_in: usize,
        input: [usize; 2],
        channels_out: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        output: [usize; 2],
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

        fn positions(&self) -> usize {
            self.output[0] * self.output[1]
        }

        /// Values one kernel application reads: input channels times kernel size.
        fn patch(&self) -> usize {
            self.channels_in * self.kernel[0] * self.kernel[1]
        }

        fn plane(&self) -> usize {
            self.input[0] * self.input[1]
        }

        fn chunks(&self) -> impl Iterator<Item = Range<usize>> + '_ {
            (0..self.batch).step_by(self.images_per_product).map(|first| first..(first + self.images_per_product).min(self.batch))
        }
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
            output[images.start * channels_out * positions..images.end * channels_out * positions]
                .par_chunks_mut(channels_out * positions)
                .enumerate()
                .for_each(|(image, output)| {
                    for (o, output) in output.chunks_exact_mut(positions).enumerate() {
                        output.copy_from_slice(&product[o * depth + image * positions..][..positions]);
                    }
                });
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

    thread_local! {
        static SPARE_SCRATCH: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
    }

    /// Buffers a convolution takes from the spares its thread keeps, and gives back:
    /// fresh buffers of tens of MiB have their pages faulted in and zeroed by the kernel at
    /// every call; with spares the forward pass at batch 250 ran 12 % faster
    /// (docs/performance.md). Each convolution takes two, so two are kept, those within
    /// `SCRATCH_VALUES`: the worker thread holds at most 64 MiB between requests.
    struct Scratch {
        values: Vec<f32>,
        len: usize,
    }

    const SPARES_KEPT: usize = 2;

    impl Scratch {
        /// `len` values left over from earlier use (NaN in tests): callers write every value
        /// they read. The smallest spare that fits, so that the other fits the other buffer.
        fn take(len: usize) -> Self {
            let spare = SPARE_SCRATCH.with_borrow_mut(|spares| {
                // Largest first, so the last that fits is the smallest.
                let fitting = spares.iter().rposition(|values| values.len() >= len)?;
                Some(spares.remove(fitting))
            });
            let mut values = spare.unwrap_or_else(|| vec![0.0; len]);
            if cfg!(test) {
                values[..len].fill(f32::NAN);
            }
            Self { values, len }
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let values = std::mem::take(&mut self.values);
            if values.len() <= SCRATCH_VALUES {
                // Not at all while the thread's storage is being torn down.
                let _ = SPARE_SCRATCH.try_with(|spares| {
                    let mut spares = spares.borrow_mut();
                    spares.push(values);
                    spares.sort_by_key(|values| std::cmp::Reverse(values.len()));
                    spares.truncate(SPARES_KEPT);
                });
            }
        }
    }

    impl Deref for Scratch {
        type Target = [f32];

        fn deref(&self) -> &[f32] {
            &self.values[..self.len]
        }
    }

    impl DerefMut for Scratch {
        fn deref_mut(&mut self) -> &mut [f32] {
            &mut self.values[..self.len]
        }
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

    /// A matrix in a slice: element (i, j) at `values[i * row_stride + j * col_stride]`.
    #[derive(Clone, Copy)]
    struct View<'a> {
        values: &'a [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    }

    impl View<'_> {
        fn in_bounds(&self) -> bool {
            let last = || (self.rows - 1).checked_mul(self.row_stride)?.checked_add((self.cols - 1).checked_mul(self.col_stride)?);
            self.rows == 0 || self.cols == 0 || last().is_some_and(|last| last < self.values.len())
        }
    }

    enum Sum {
        Overwrite,
        Accumulate,
    }

    /// Output columns below which a product is not split between threads.
    const MIN_COLUMNS_PER_THREAD: usize = 64;

    /// A matrix's first element, shared by the threads that write its disjoint column blocks.
    #[derive(Clone, Copy)]
    struct Destination(*mut f32);

    // SAFETY: `multiply` hands each thread its own columns of the matrix.
    unsafe impl Send for Destination {}
    unsafe impl Sync for Destination {}

    impl Destination {
        fn at(self, offset: usize) -> *mut f32 {
            self.0.wrapping_add(offset)
        }
    }

    /// `dst = lhs x rhs`, or `dst += lhs x rhs`, `dst` row-major. The output columns are split
    /// into one block per thread, each a product of its own: gemm's own threading splits
    /// rows, and ran the products with 64 rows (64 output channels) on one thread.
    fn multiply(dst: &mut [f32], lhs: View, rhs: View, sum: Sum) {
        let dst_fits = lhs.rows.checked_mul(rhs.cols) == Some(dst.len());
        assert!(lhs.cols == rhs.rows && dst_fits && lhs.in_bounds() && rhs.in_bounds(), "matrix shapes");
        let threads = rayon::current_num_threads().min(rhs.cols / MIN_COLUMNS_PER_THREAD).max(1);
        let width = rhs.cols.div_ceil(threads).max(1);
        let destination = Destination(dst.as_mut_ptr());
        (0..rhs.cols).into_par_iter().step_by(width).for_each(|first| {
            let cols = width.min(rhs.cols - first);
            // SAFETY: the asserts above keep every element gemm reads and writes in its slice,
            // and each thread writes only columns `first..first + cols` of `dst`.
            unsafe {
                gemm(
                    lhs.rows,
                    cols,
                    lhs.cols,
                    destination.at(first),
                    1,
                    rhs.cols as isize,
                    matches!(sum, Sum::Accumulate),
                    lhs.values.as_ptr(),
                    lhs.col_stride as isize,
                    lhs.row_stride as isize,
                    rhs.values.as_ptr().wrapping_add(first * rhs.col_stride),
                    rhs.col_stride as isize,
                    rhs.row_stride as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
        });
    }

    #[cfg(test)]
    mod tests {
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

        fn assert_close(got: &[f32], expected: &[f64], what: &str) {
            assert_eq!(got.len(), expected.len(), "{what}");
            for (got, expected) in got.iter().zip(expected) {
                assert!((*got as f64 - expected).abs() <= 1e-4 * (1.0 + expected.abs()), "{what}: {got} vs {expected}");
            }
        }

        /// Products wide enough to be split between threads (three blocks, one shorter),
        /// either operand read transposed, overwriting and accumulating, equal the sums of
        /// their definition.
        #[test]
        fn split_products_equal_their_definitions() {
            let (rows, depth, cols) = (5, 7, 3 * MIN_COLUMNS_PER_THREAD + 5);
            let lhs: Vec<f32> = (0..rows * depth).map(|i| (i % 11) as f32 - 5.0).collect();
            let rhs: Vec<f32> = (0..depth * cols).map(|i| (i % 13) as f32 / 4.0 - 1.5).collect();
            // The same matrices stored column by column, as the gradients read them.
            let transpose = |values: &[f32], rows: usize, cols: usize| (0..rows * cols).map(|i| values[(i % rows) * cols + i / rows]).collect::<Vec<_>>();
            let (lhs_transposed, rhs_transposed) = (transpose(&lhs, rows, depth), transpose(&rhs, depth, cols));
            let lhs_views = [
                View { values: &lhs, rows, cols: depth, row_stride: depth, col_stride: 1 },
                View { values: &lhs_transposed, rows, cols: depth, row_stride: 1, col_stride: rows },
            ];
            let rhs_views = [
                View { values: &rhs, rows: depth, cols, row_stride: cols, col_stride: 1 },
                View { values: &rhs_transposed, rows: depth, cols, row_stride: 1, col_stride: depth },
            ];
            let expected: Vec<f64> =
                (0..rows * cols).map(|index| (0..depth).map(|k| lhs[index / cols * depth + k] as f64 * rhs[k * cols + index % cols] as f64).sum()).collect();
            let doubled: Vec<f64> = expected.iter().map(|value| 2.0 * value).collect();
            rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("a thread pool").install(|| {
                for (lhs_view, rhs_view) in lhs_views.iter().flat_map(|lhs| rhs_views.iter().map(move |rhs| (*lhs, *rhs))) {
                    let mut dst = vec![f32::NAN; rows * cols];
                    multiply(&mut dst, lhs_view, rhs_view, Sum::Overwrite);
                    assert_close(&dst, &expected, "overwritten");
                    multiply(&mut dst, lhs_view, rhs_view, Sum::Accumulate);
                    assert_close(&dst, &doubled, "accumulated");
                }
            });
        }

        /// A spare is reused at the length asked for, the smallest that fits; the two
        /// largest are kept, and none larger than `SCRATCH_VALUES`. (Stale values in reused buffers are what
        /// `products_equal_the_definitions_term_by_term` meets from its second product on.)
        #[test]
        fn scratch_buffers_are_reused_within_bounds() {
            let spares = || SPARE_SCRATCH.with_borrow(|spares| spares.iter().map(Vec::len).collect::<Vec<_>>());
            let first = Scratch::take(100);
            let address = first.as_ptr();
            drop(first);
            let again = Scratch::take(60);
            assert_eq!((again.len(), again.as_ptr()), (60, address), "the spare, at the length asked for");
            drop(again);
            drop([Scratch::take(10), Scratch::take(200), Scratch::take(300)]);
            assert_eq!(spares(), [300, 200], "the two largest");
            let smallest = SPARE_SCRATCH.with_borrow(|spares| spares[1].as_ptr());
            let fitting = Scratch::take(150);
            assert_eq!(fitting.as_ptr(), smallest, "the smallest spare that fits");
            assert!(fitting.iter().all(|value| value.is_nan()), "stale values, NaN in tests");
            drop(fitting);
            drop(Scratch::take(SCRATCH_VALUES + 1));
            assert_eq!(spares(), [300, 200], "nothing larger than the bound");
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
}
