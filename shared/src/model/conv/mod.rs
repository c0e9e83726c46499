//! The model's convolutions: Burn's, except on the CPU backend (the server's and the page's).
//!
//! Flex runs convolutions as many narrow matrix products (for the weight gradient, one
//! 9-wide product per input channel), most of a CPU training step (docs/performance.md).
//! With the `flex-kernels` feature, Flex and `Autodiff<Flex>` get the forward pass and both
//! gradients as wide products of the unfolded input instead (`unfolded`), and the 3x3
//! convolutions of stride 1, most of the model's work, all three in Winograd's form
//! (`winograd`); other backends keep Burn's (see `super::flex`). A model's kernels in
//! Winograd's form are kept between calls where transforming them would cost as much as the
//! products (`kept`): a single image, as the page classifies.

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
    use super::kept::KEPT;
    use super::unfolded::{self, Geometry};
    use super::winograd::{self, Kernels, Plan};

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
                Ok(cast(Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(conv2d(&x, &weight, &options, WeightLife::Lasting)))))
            }
            None => Err(x),
        }
    }

    /// Burn's autodiff convolution, with this module's forward pass and gradients.
    fn conv2d_tracked(x: FloatTensor<Training>, weight: FloatTensor<Training>, options: ConvOptions<2>) -> FloatTensor<Training> {
        match Convolution.prepare::<NoCheckpointing>([x.node.clone(), weight.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&weight), options.clone());
                prep.finish(state, conv2d(&x.primitive, &weight.primitive, &options, WeightLife::Stepped))
            }
            OpsKind::UnTracked(prep) => prep.finish(conv2d(&x.primitive, &weight.primitive, &options, WeightLife::Stepped)),
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
    fn on_values<const N: usize, T>(tensors: [&FlexTensor; N], op: impl FnOnce([&[f32]; N]) -> T) -> T {
        let contiguous = tensors.map(FlexTensor::to_contiguous);
        op(contiguous.each_ref().map(|t| t.as_slice().expect("contiguous f32")))
    }

    fn tensor(values: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(values, shape))
    }

    /// How long a convolution's weight lasts: kernels transformed for it are worth keeping
    /// only if it is used again.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum WeightLife {
        /// A model's, at inference: used call after call.
        Lasting,
        /// Training's: replaced after every step.
        Stepped,
    }

    fn conv2d(x: &FlexTensor, weight: &FlexTensor, options: &ConvOptions<2>, life: WeightLife) -> FlexTensor {
        if !all_f32(&[x, weight]) {
            return Flex::conv2d(x.clone(), weight.clone(), None, options.clone());
        }
        let geometry = geometry(x, weight, options);
        let values = match Plan::forward(&geometry) {
            Some(plan) if life == WeightLife::Lasting && plan.kernels_worth_keeping() && KEPT.keeps(plan.transformed_kernel_values()) => {
                let kernels = KEPT.kernels(weight, || on_values([weight], |[weight]| winograd::transformed_kernels(weight, &plan)));
                on_values([x], |[x]| winograd::forward(x, Kernels::Transformed(&kernels), &plan))
            }
            Some(plan) => on_values([x, weight], |[x, weight]| winograd::forward(x, Kernels::Given(weight), &plan)),
            None => on_values([x, weight], |[x, weight]| unfolded::forward(x, weight, &geometry)),
        };
        tensor(values, geometry.output_shape())
    }

    fn input_gradient(x: &FlexTensor, weight: &FlexTensor, grad: &FlexTensor, options: &ConvOptions<2>) -> FlexTensor {
        if !all_f32(&[x, weight, grad]) {
            return Flex::conv2d_x_backward(x.clone(), weight.clone(), grad.clone(), options.clone());
        }
        let geometry = geometry(x, weight, options);
        let values = on_values([weight, grad], |[weight, grad]| match Plan::input_gradient(&geometry) {
            Some(plan) => winograd::input_gradient(weight, grad, &plan),
            None => unfolded::input_gradient(weight, grad, &geometry),
        });
        tensor(values, x.layout().shape().dims())
    }

    fn weight_gradient(x: &FlexTensor, weight: &FlexTensor, grad: &FlexTensor, options: &ConvOptions<2>) -> FlexTensor {
        if !all_f32(&[x, weight, grad]) {
            return Flex::conv2d_weight_backward(x.clone(), weight.clone(), grad.clone(), options.clone());
        }
        let geometry = geometry(x, weight, options);
        let values = on_values([x, grad], |[x, grad]| match Plan::forward(&geometry) {
            Some(plan) => winograd::weight_gradient(x, grad, &plan),
            None => unfolded::weight_gradient(x, grad, &geometry),
        });
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
            Conv2dConfig::new([channels, 16], [kernel, kernel])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(padding, padding, padding, padding))
                .with_bias(false)
                .init(&Default::default())
        }

        fn assert_close<const D: usize>(ours: Tensor<Flex, D>, burns: Tensor<Flex, D>, what: &str) {
            // `max` below might drop a NaN.
            assert!(ours.to_data().iter::<f32>().all(f32::is_finite), "{what}: not finite");
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

        // Odd sizes, strides 1 and 2, 3x3 padded and 1x1 unpadded, as in ResNet18; 3x3 ones
        // of stride 1 in Winograd's form where the input or the output has 16 channels.
        const CASES: [(usize, usize, usize, usize, usize); 5] = [(3, 3, 1, 1, 9), (5, 3, 2, 1, 11), (4, 1, 2, 0, 7), (6, 3, 1, 0, 6), (16, 3, 1, 1, 7)];

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
            // A single image's 16-channel convolution has 4 tiles, so its kernels are kept
            // from the first call for the second; 17 images' 68 are not.
            for (channels, kernel, stride, padding, side) in CASES {
                let conv = plain::<Flex>(channels, kernel, stride, padding);
                for batch in [17, 1] {
                    let x = Tensor::<Flex, 4>::random([batch, channels, side + 1, side], Distribution::Normal(0.0, 1.0), &device);
                    let burns = conv.forward(x.clone());
                    for call in ["first", "second"] {
                        let ours = convolve(&conv, x.clone()).expect("a plain convolution on Flex");
                        let what = format!("{channels} channels, {kernel}x{kernel} stride {stride}, batch {batch}, {call} call");
                        assert_close(ours, burns.clone(), &what);
                        let kept = KEPT.holds(&conv.weight.val().into_primitive().tensor());
                        assert_eq!(kept, channels == 16 && batch == 1, "kernels kept, {what}");
                    }
                }
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
                        time(&|| drop(conv2d(&x, &weight, &options, WeightLife::Lasting))),
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

#[cfg(feature = "flex-kernels")]
mod kept;
#[cfg(feature = "flex-kernels")]
mod matrix;
#[cfg(feature = "flex-kernels")]
mod unfolded;
#[cfg(feature = "flex-kernels")]
mod winograd;
