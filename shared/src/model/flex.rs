//! Telling the CPU backend apart at run time, for the kernels of our own that
//! replace Flex's where they are slow (`conv`, `norm`): the model stays generic over
//! `Backend`, and every other backend (the GPU ones, in the server and the page) keeps Burn's
//! operations.

use std::any::{Any, TypeId};

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;

/// The CPU backend with gradients: training and the importance pass.
pub(super) type Training = Autodiff<Flex>;

/// Which of the CPU backends `B` is, if either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnFlex {
    /// Flex alone: inference.
    Plain,
    /// `Autodiff<Flex>`.
    Training,
}

impl OnFlex {
    pub(super) fn of<B: Backend>() -> Option<Self> {
        let backend = TypeId::of::<B>();
        if backend == TypeId::of::<Training>() {
            Some(Self::Training)
        } else if backend == TypeId::of::<Flex>() {
            Some(Self::Plain)
        } else {
            None
        }
    }
}

/// `tensor` as a tensor of `Target`, which the caller checked is `Source`.
pub(super) fn cast<Source: Backend, Target: Backend, const D: usize>(tensor: Tensor<Source, D>) -> Tensor<Target, D> {
    let mut slot = Some(tensor);
    (&mut slot as &mut dyn Any).downcast_mut::<Option<Tensor<Target, D>>>().and_then(Option::take).expect("the same backend")
}
