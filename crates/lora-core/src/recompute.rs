//! Block-level gradient checkpointing: a block (a decoder layer) runs its forward without
//! recording anything for autodiff, and its backward step runs the block again from the saved
//! input — this time recording — and back-propagates through that.
//!
//! What stays in memory between forward and backward is each block's input and nothing else,
//! at the price of a second forward per block. That is `torch.utils.checkpoint` (non-reentrant
//! form), which transformers' `gradient_checkpointing_enable()` applies per decoder layer.
//! burn's own `gradient_checkpointing()` strategy recomputes single memory-bound operations
//! but keeps the output of every compute-bound one; on the 1B Llama shape at 256 tokens it kept
//! 70 MB per layer against 80 MB without it, where the layer's input is 2 MB.
//!
//! The backward step runs a nested `backward()` over the recomputed block (a separate autodiff
//! graph: burn's graph client allows a step to do this) and adds the gradients it finds — of the
//! block's input and of every trainable parameter in it — into the outer pass's gradients.
//!
//! Dropout inside a block must draw the same masks in the recomputation: [`Recompute`]
//! implementations seed the device's generator before each run (see
//! [`Recompute::forward`]'s contract).
//!
//! # Shapes
//! `x`: `[B, T, D]` → `[B, T, D]`

use std::fmt;
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, AutodiffBackend, Backend, BackendTensor, Dispatch, DispatchKindConversion,
    DispatchTensor, backend_extension,
};
use burn::tensor::Tensor;

/// A block whose activations are recomputed in the backward pass.
pub trait Recompute: Send + Sync + fmt::Debug {
    /// The block's forward with its parameters as they are (tracked on an autodiff device).
    /// Any randomness (dropout) must be drawn after seeding the device with `seed`, so that a
    /// second call with the same seed draws the same masks.
    fn forward(&self, x: Tensor<3>, seed: u64) -> Tensor<3>;

    /// The same forward with nothing recorded: the block's parameters and constants without
    /// their autodiff association (`Module::valid`, `Tensor::inner`), `x` already inner.
    fn forward_untracked(&self, x: Tensor<3>, seed: u64) -> Tensor<3>;

    /// Every trainable parameter of the block (as used by [`Recompute::forward`]) with its
    /// gradient in `grads`, as `(parameter, gradient)` dispatch tensors.
    fn param_grads(&self, grads: &burn::tensor::Gradients)
    -> Vec<(DispatchTensor, DispatchTensor)>;
}

/// A shared [`Recompute`] block, with the seed its forward drew its randomness from.
#[derive(Clone)]
pub struct Block {
    /// The block.
    pub block: Arc<dyn Recompute>,
    /// The seed of its dropout masks.
    pub seed: u64,
}

impl fmt::Debug for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Block({:?}, seed {})", self.block, self.seed)
    }
}

/// The recomputed block as a backend operation. Only autodiff backends do anything special;
/// on the others (never reached through [`checkpointed`]) it is the plain forward.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(feature = "wgpu"),
    Autodiff
)]
pub trait RecomputeBackend: Backend {
    /// `block(x)`, recording only `x` for the backward pass.
    fn recompute_block(x: FloatTensor<Self>, block: Block) -> FloatTensor<Self>;
}

/// `block(x)` on a backend without autodiff.
fn plain<B: Backend>(x: FloatTensor<B>, block: Block) -> FloatTensor<B>
where
    DispatchTensor: DispatchKindConversion<B>,
{
    let y = block
        .block
        .forward_untracked(Tensor::from_primitive::<B>(x), block.seed);
    into_primitive::<B>(y.into_dispatch())
}

/// The float primitive of a dispatch tensor known to live on `B`.
///
/// # Panics
/// If it does not: every caller hands over a tensor it made on `B` itself.
fn into_primitive<B: Backend>(t: DispatchTensor) -> FloatTensor<B>
where
    DispatchTensor: DispatchKindConversion<B>,
{
    match <DispatchTensor as DispatchKindConversion<B>>::try_into_backend(t) {
        Ok(BackendTensor::Float(p)) => p,
        Ok(other) => panic!("recompute: expected a float tensor, got {}", other.name()),
        Err(e) => panic!("recompute: a block returned a tensor on another backend: {e}"),
    }
}

#[cfg(feature = "flex")]
impl RecomputeBackend for burn::backend::Flex {
    fn recompute_block(x: FloatTensor<Self>, block: Block) -> FloatTensor<Self> {
        plain::<Self>(x, block)
    }
}
#[cfg(feature = "ndarray")]
#[allow(deprecated)]
impl RecomputeBackend for burn::backend::NdArray {
    fn recompute_block(x: FloatTensor<Self>, block: Block) -> FloatTensor<Self> {
        plain::<Self>(x, block)
    }
}
#[cfg(feature = "wgpu")]
impl RecomputeBackend for burn::backend::Cube {
    fn recompute_block(x: FloatTensor<Self>, block: Block) -> FloatTensor<Self> {
        plain::<Self>(x, block)
    }
}

/// The backward step: recompute with a graph from the saved input, back-propagate the output's
/// gradient through it, hand the gradients found to the outer pass.
#[derive(Debug)]
struct RecomputeStep<C>(std::marker::PhantomData<C>);

impl<B, C> Backward<B, 1> for RecomputeStep<C>
where
    B: Backend,
    C: CheckpointStrategy,
    DispatchTensor: DispatchKindConversion<B> + DispatchKindConversion<Autodiff<B, C>>,
{
    type State = (FloatTensor<B>, Block);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let Ops {
            parents,
            node,
            state: (x, block),
        } = ops;
        let grad_out = grads.consume::<B>(&node);
        let on_autodiff = |p: FloatTensor<B>| {
            Tensor::<3>::from_primitive::<Autodiff<B, C>>(<Autodiff<B, C>>::from_inner(p))
        };
        // A fresh leaf: the recomputation is a graph of its own.
        let x = on_autodiff(x).require_grad();
        let y = block.block.forward(x.clone(), block.seed);
        // ∂/∂y Σ y ⊙ g = g: back-propagating this scalar sends exactly `g` into the block.
        let inner = (y * on_autodiff(grad_out)).sum().backward();
        let [parent] = parents;
        if let (Some(parent), Some(gx)) = (parent, x.grad(&inner)) {
            grads.register::<B>(parent.id, into_primitive::<B>(gx.into_dispatch()));
        }
        for (param, grad) in block.block.param_grads(&inner) {
            let id =
                match <DispatchTensor as DispatchKindConversion<Autodiff<B, C>>>::try_into_backend(
                    param,
                ) {
                    Ok(BackendTensor::Float(p)) => p.id(),
                    _ => panic!(
                        "recompute: a trainable parameter of the block is not on this autodiff backend"
                    ),
                };
            grads.register::<B>(id, into_primitive::<B>(grad));
        }
    }
}

impl<B, C> RecomputeBackend for Autodiff<B, C>
where
    B: Backend,
    C: CheckpointStrategy,
    DispatchTensor: DispatchKindConversion<B> + DispatchKindConversion<Autodiff<B, C>>,
{
    fn recompute_block(x: FloatTensor<Self>, block: Block) -> FloatTensor<Self> {
        let (x, node) = x.into_parts();
        let y = plain::<B>(x.clone(), block.clone());
        match RecomputeStep::<C>(std::marker::PhantomData)
            .prepare::<C>([node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((x, block), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}

/// `block(x)` keeping only `x` for the backward pass (see the module docs). Off an autodiff
/// device it is the plain forward. The input is made a tracked leaf when it is not tracked (the
/// first block's input comes from a frozen embedding), so that the block's own parameters still
/// get their gradients.
///
/// # Shapes
/// `x`: `[B, T, D]` → `[B, T, D]`
pub fn checkpointed(x: Tensor<3>, block: Arc<dyn Recompute>, seed: u64) -> Tensor<3> {
    if !x.is_autodiff() {
        return block.forward(x, seed);
    }
    let x = if x.is_tracked() {
        x
    } else {
        x.detach().require_grad()
    };
    let out =
        <Dispatch as RecomputeBackend>::recompute_block(x.into_dispatch(), Block { block, seed });
    Tensor::from_dispatch(out)
}
