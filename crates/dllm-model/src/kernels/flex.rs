//! The bridge between generic model code and burn's flex backend, plain and under autodiff.
//!
//! Generic code reaches the kernels through a type check: a `Tensor<B, D>` whose `B` is `Flex`
//! is read in place (no copy when contiguous); one whose `B` is `Autodiff<Flex, C>` (with or
//! without gradient checkpointing) runs the same forward kernel and records a hand-written
//! backward pass ([`record`]). Every other backend fails the check and keeps its tensor
//! expressions.

use std::any::{Any, TypeId};
use std::borrow::Cow;

use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::autodiff::ops::{Backward, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::{Autodiff, Flex};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{backend::Backend, DType, Tensor, TensorData, TensorPrimitive};
use burn_flex::FlexTensor;

use super::gemm::{HeadsView, Strided};
use super::matmul_half::{HalfMatrix, HalfSlice};

/// What a kernel file needs to write its autodiff op, imported whole
/// (`use super::flex::op_prelude::*`) so no kernel repeats the list.
pub(super) mod op_prelude {
    pub(crate) use burn::backend::autodiff::checkpoint::base::Checkpointer;
    pub(crate) use burn::backend::autodiff::grads::Gradients;
    pub(crate) use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    pub(crate) use burn::backend::autodiff::NodeId;
    pub(crate) use burn::backend::Flex;
    pub(crate) use burn_flex::FlexTensor;
    pub(crate) use std::sync::Arc;
}

/// flex inside autodiff with checkpoint strategy `C`.
pub(super) type Ad<C> = Autodiff<Flex, C>;

/// `Some(t)` as a `U` when `T` is `U`.
fn same_type<T: 'static, U: 'static>(t: T) -> Option<U> {
    (Box::new(t) as Box<dyn Any>)
        .downcast::<U>()
        .ok()
        .map(|b| *b)
}

/// Whether `B` is plain flex.
pub(super) fn is_flex<B: Backend>() -> bool {
    TypeId::of::<B>() == TypeId::of::<Flex>()
}

/// Whether `B` is flex, plain or inside autodiff: the backends these kernels serve. Checked
/// before any host-side preparation, so other backends pay nothing.
pub(super) fn runs_on_flex<B: Backend>() -> bool {
    let b = TypeId::of::<B>();
    b == TypeId::of::<Flex>()
        || b == TypeId::of::<Ad<NoCheckpointing>>()
        || b == TypeId::of::<Ad<BalancedCheckpointing>>()
}

/// Runs `$body` with the type `$C` bound to the checkpoint strategy when `$B` is
/// `Autodiff<Flex, $C>` for one of burn's two strategies; `None` otherwise.
macro_rules! with_autodiff_flex {
    ($B:ty, $C:ident => $body:expr) => {{
        use ::burn::backend::autodiff::checkpoint::strategy::{
            BalancedCheckpointing, NoCheckpointing,
        };
        use ::std::any::TypeId;
        use $crate::kernels::flex::Ad;
        if TypeId::of::<$B>() == TypeId::of::<Ad<NoCheckpointing>>() {
            type $C = NoCheckpointing;
            Some($body)
        } else if TypeId::of::<$B>() == TypeId::of::<Ad<BalancedCheckpointing>>() {
            type $C = BalancedCheckpointing;
            Some($body)
        } else {
            None
        }
    }};
}
pub(super) use with_autodiff_flex;

/// The flex primitive of a tensor known to be on flex.
pub(super) fn to_flex<B: Backend, const D: usize>(t: &Tensor<B, D>) -> FlexTensor {
    same_type::<_, Tensor<Flex, D>>(t.clone())
        .expect("checked by is_flex")
        .into_primitive()
        .tensor()
}

/// The flex primitive of an integer tensor of flex or of `Autodiff<Flex, C>` (whose integer
/// tensors are flex's own); `None` on other backends.
pub(super) fn int_to_flex<B: Backend, const D: usize>(
    t: &Tensor<B, D, burn::tensor::Int>,
) -> Option<FlexTensor> {
    use burn::tensor::Int;
    if let Some(t) = same_type::<_, Tensor<Flex, D, Int>>(t.clone()) {
        return Some(t.into_primitive());
    }
    with_autodiff_flex!(B, C => same_type::<_, Tensor<Ad<C>, D, Int>>(t.clone())
        .expect("B is autodiff flex")
        .into_primitive())
}

/// A flex primitive as a tensor of `B` (known to be flex).
pub(super) fn from_flex<B: Backend, const D: usize>(t: FlexTensor) -> Tensor<B, D> {
    same_type(Tensor::<Flex, D>::from_primitive(TensorPrimitive::Float(t))).expect("B is flex")
}

/// The autodiff primitive of a tensor known to be on `Autodiff<Flex, C>`.
pub(super) fn to_ad<B: Backend, C: CheckpointStrategy, const D: usize>(
    t: &Tensor<B, D>,
) -> FloatTensor<Ad<C>> {
    same_type::<_, Tensor<Ad<C>, D>>(t.clone())
        .expect("checked by with_autodiff_flex")
        .into_primitive()
        .tensor()
}

/// An autodiff primitive as a tensor of `B` (known to be `Autodiff<Flex, C>`).
pub(super) fn from_ad<B: Backend, C: CheckpointStrategy, const D: usize>(
    t: FloatTensor<Ad<C>>,
) -> Tensor<B, D> {
    same_type(Tensor::<Ad<C>, D>::from_primitive(TensorPrimitive::Float(
        t,
    )))
    .expect("B is autodiff flex")
}

/// The f32 values of a flex tensor in row-major order, borrowed when already laid out so.
pub(super) fn read(t: &FlexTensor) -> Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(values) => Cow::Borrowed(values),
        None => Cow::Owned(
            t.to_contiguous()
                .into_data()
                .into_vec::<f32>()
                .expect("the fused kernels only take f32 tensors"),
        ),
    }
}

/// `t` itself when its strides are non-negative (any transpose or slice), else a contiguous
/// copy: either way readable through [`heads_view`] and [`matrix_view`].
pub(super) fn forward_strided(t: FlexTensor) -> FlexTensor {
    if t.layout().has_positive_strides() {
        t
    } else {
        t.to_contiguous()
    }
}

/// A `[batch, heads, rows, head_dim]` view of a 4-D f32 flex tensor with non-negative strides.
pub(super) fn heads_view(t: &FlexTensor) -> HeadsView<'_> {
    let layout = t.layout();
    let dims: [usize; 4] = layout.shape().dims::<4>();
    let s = layout.strides();
    let strides =
        [s[0], s[1], s[2], s[3]].map(|s| usize::try_from(s).expect("non-negative strides"));
    HeadsView::new(t.storage::<f32>(), layout.start_offset(), dims, strides)
}

/// A 2-D f32 flex tensor with non-negative strides as a strided matrix.
pub(super) fn matrix_view(t: &FlexTensor) -> Strided<'_> {
    let layout = t.layout();
    let [rows, cols] = layout.shape().dims::<2>();
    let s = layout.strides();
    let [row, col] = [s[0], s[1]].map(|s| usize::try_from(s).expect("non-negative strides"));
    Strided::with_strides(
        &t.storage::<f32>()[layout.start_offset()..],
        rows,
        cols,
        row,
        col,
    )
}

/// A 2-D bf16 or f16 flex tensor with non-negative strides as a strided half-precision matrix.
pub(super) fn half_matrix_view(t: &FlexTensor) -> HalfMatrix<'_> {
    let layout = t.layout();
    let [rows, cols] = layout.shape().dims::<2>();
    let s = layout.strides();
    let [row, col] = [s[0], s[1]].map(|s| usize::try_from(s).expect("non-negative strides"));
    let start = layout.start_offset();
    let data = match t.dtype() {
        DType::BF16 => HalfSlice::BF16(&t.storage::<half::bf16>()[start..]),
        DType::F16 => HalfSlice::F16(&t.storage::<half::f16>()[start..]),
        other => unreachable!("checked by is_half: {other:?}"),
    };
    HalfMatrix::with_strides(data, rows, cols, row, col)
}

/// A flex tensor of `dtype` (f32, bf16 or f16) holding f32 `values` rounded to it.
pub(super) fn flex_tensor_of(
    values: Vec<f32>,
    shape: impl Into<burn::tensor::Shape>,
    dtype: DType,
) -> FlexTensor {
    let data = TensorData::new(values, shape);
    FlexTensor::from_data(match dtype {
        DType::F32 => data,
        other => data.convert_dtype(other),
    })
}

/// A flex tensor holding `values` with `shape`.
pub(super) fn flex_tensor(values: Vec<f32>, shape: impl Into<burn::tensor::Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// Records `out` as the result of the compute-bound `op` on `inputs`: when any input is tracked,
/// the inputs are checkpointed (kept, never recomputed) and `state` builds the backward state
/// from their ids.
pub(super) fn record<C, O, S, const N: usize>(
    op: O,
    inputs: [&FloatTensor<Ad<C>>; N],
    out: FlexTensor,
    state: impl FnOnce([NodeId; N]) -> S,
) -> FloatTensor<Ad<C>>
where
    C: CheckpointStrategy,
    O: Backward<Flex, N, State = S>,
    S: Clone + Send + std::fmt::Debug + 'static,
{
    match op
        .prepare::<C>(inputs.map(|t| t.node.clone()))
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let ids = inputs.map(|t| prep.checkpoint(t));
            prep.finish(state(ids), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}
