//! A linear layer (bias-free in LLaDA; Dream's q/k/v carry a bias) with an optional LoRA adapter
//! (docs/algorithm.md §5: LoRA on the block's linears).

use burn::module::{Module, Param};
use burn::nn::Dropout;
use burn::tensor::{backend::Backend, module::linear, Distribution, Tensor};

use crate::nf4_weight::Nf4Weight;
use crate::params::ParamSource;

/// `y = x W + b` with `W` stored `[in, out]` (burn's layout; Hugging Face stores `[out, in]` and
/// the loader transposes), plus `scale * dropout(x) A B` when an adapter is attached and enabled
/// (PEFT adds the update to the biased base output).
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// Base weight, `[in, out]`.
    pub weight: LinearWeight<B>,
    /// Bias `[out]`, when the layer has one.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// LoRA adapter, if one is attached.
    pub lora: Option<Lora<B>>,
}

/// A low-rank update `scale * A B` (PEFT's `lora_A`, `lora_B`, `scaling = alpha / r`).
#[derive(Module, Debug)]
pub struct Lora<B: Backend> {
    /// Down projection, `[in, r]` (PEFT `lora_A.weight` is its transpose).
    pub a: Param<Tensor<B, 2>>,
    /// Up projection, `[r, out]` (PEFT `lora_B.weight` is its transpose).
    pub b: Param<Tensor<B, 2>>,
    /// `alpha / r`.
    pub scale: f64,
    /// Dropout on the adapter's input (active only under autodiff, unless `dropout_always`).
    pub dropout: Dropout,
    /// Apply the dropout outside autodiff too (the no-grad rollout passes), as the reference,
    /// which samples in HF's train mode; drawn from the backend's generator.
    pub dropout_always: bool,
}

/// A linear layer's base weight: a (trainable or frozen) dense matrix, or a frozen NF4 one.
#[derive(Module, Debug)]
pub enum LinearWeight<B: Backend> {
    /// Dense `[in, out]` (f32, bf16 or f16).
    Dense(Param<Tensor<B, 2>>),
    /// NF4 (bitsandbytes' `Linear4bit` weight), always frozen.
    Nf4(Nf4Weight<B>),
}

impl<B: Backend> LinearWeight<B> {
    /// The weight `[in, out]`: the dense matrix, or the NF4 weight decoded (one layer's copy).
    pub fn val(&self) -> Tensor<B, 2> {
        match self {
            Self::Dense(w) => w.val(),
            Self::Nf4(w) => w.dequantize(),
        }
    }

    /// `[in, out]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            Self::Dense(w) => w.val().dims(),
            Self::Nf4(w) => w.dims(),
        }
    }

    /// Whether the weight is NF4.
    pub fn is_nf4(&self) -> bool {
        matches!(self, Self::Nf4(_))
    }
}

impl<B: Backend> Linear<B> {
    /// A linear layer from a `[in, out]` weight.
    pub fn from_weight(weight: Tensor<B, 2>) -> Self {
        Self::from_base(LinearWeight::Dense(Param::from_tensor(weight)))
    }

    /// A linear layer over `weight`, without bias or adapter.
    pub fn from_base(weight: LinearWeight<B>) -> Self {
        Self {
            weight,
            bias: None,
            lora: None,
        }
    }

    /// The layer named `name` (its weight is `{name}.weight`), `[d_in, d_out]`, from `source`,
    /// its weight dense in any case (the LM head, which quantisation leaves dense).
    pub fn build_dense<S: ParamSource<B> + ?Sized>(
        name: &str,
        d_in: usize,
        d_out: usize,
        source: &mut S,
    ) -> Result<Self, S::Error> {
        let weight = source.linear_weight(&format!("{name}.weight"), d_in, d_out)?;
        Ok(Self::from_weight(weight))
    }

    /// A block's layer named `name` (its weight is `{name}.weight`), `[d_in, d_out]`, from
    /// `source`: dense, or NF4 where the source holds or makes it so.
    pub fn build<S: ParamSource<B> + ?Sized>(
        name: &str,
        d_in: usize,
        d_out: usize,
        source: &mut S,
    ) -> Result<Self, S::Error> {
        let weight = source.linear(&format!("{name}.weight"), d_in, d_out)?;
        Ok(Self::from_base(weight))
    }

    /// [`build`](Self::build), then the bias `{name}.bias` `[d_out]`.
    pub fn build_with_bias<S: ParamSource<B> + ?Sized>(
        name: &str,
        d_in: usize,
        d_out: usize,
        source: &mut S,
    ) -> Result<Self, S::Error> {
        let mut layer = Self::build(name, d_in, d_out, source)?;
        layer.bias = Some(Param::from_tensor(
            source.bias(&format!("{name}.bias"), d_out)?,
        ));
        Ok(layer)
    }

    /// Input and output sizes.
    pub fn dims(&self) -> [usize; 2] {
        self.weight.dims()
    }

    /// Applies the layer; the adapter contributes only when `adapter` is true.
    ///
    /// The batch and position dimensions are folded into one, so the product is a single 2-D
    /// matrix multiply: under autodiff the weight gradient is then one `xᵀ dy` product instead
    /// of one per sequence followed by a sum over the batch.
    pub fn forward(&self, x: Tensor<B, 3>, adapter: bool) -> Tensor<B, 3> {
        let [batch, len, d_in] = x.dims();
        let x = x.reshape([batch * len, d_in]);
        let y = match &self.weight {
            LinearWeight::Dense(w) => product(&x, w.val()),
            LinearWeight::Nf4(w) => {
                crate::ops::matmul_nf4(&x, w).unwrap_or_else(|| product(&x, w.dequantize()))
            }
        };
        let y = match &self.bias {
            Some(b) => {
                let b = b.val();
                let b = if b.dtype() == y.dtype() {
                    b
                } else {
                    b.cast(y.dtype())
                };
                y + b.unsqueeze::<2>()
            }
            None => y,
        };
        let y = match (&self.lora, adapter) {
            // The sum in the adapter's dtype, then back to the base's (PEFT's order).
            (Some(lora), true) => {
                let dtype = y.dtype();
                let update = lora.forward(x);
                (y.cast(update.dtype()) + update).cast(dtype)
            }
            _ => y,
        };
        let d_out = y.dims()[1];
        y.reshape([batch, len, d_out])
    }
}

/// `x w` for `x` `[rows, in]` and `w` `[in, out]`: the CPU kernel where it serves the dtypes
/// (f32 activations, f32 or half-precision weights), else burn's product in the activations'
/// dtype.
pub(crate) fn product<B: Backend>(x: &Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    crate::ops::matmul_2d(x, &w).unwrap_or_else(|| {
        let w = if w.dtype() == x.dtype() {
            w
        } else {
            w.cast(x.dtype())
        };
        linear(x.clone(), w, None)
    })
}

impl<B: Backend> Lora<B> {
    /// PEFT's default initialisation: `A ~ U(-1/sqrt(in), 1/sqrt(in))` (kaiming-uniform with
    /// `a = sqrt(5)`), `B = 0`, so a fresh adapter leaves the model unchanged.
    pub fn init(
        d_in: usize,
        d_out: usize,
        rank: usize,
        alpha: f64,
        dropout: f64,
        device: &B::Device,
    ) -> Self {
        let bound = 1.0 / (d_in as f64).sqrt();
        Self {
            a: Param::from_tensor(Tensor::random(
                [d_in, rank],
                Distribution::Uniform(-bound, bound),
                device,
            )),
            b: Param::from_tensor(Tensor::zeros([rank, d_out], device)),
            scale: alpha / rank as f64,
            dropout: Dropout { prob: dropout },
            dropout_always: false,
        }
    }

    /// Rank of the update.
    pub fn rank(&self) -> usize {
        self.a.val().dims()[1]
    }

    /// `scale * dropout(x) A B` for `x` `[rows, in]`, computed in the adapter's dtype (f32 on a
    /// bf16 or f16 base, as PEFT casts `x` to `lora_A`'s dtype).
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let a = self.a.val();
        let p = self.dropout.prob;
        let x = if self.dropout_always && p > 0.0 && !B::ad_enabled(&x.device()) {
            let keep = x.random_like(Distribution::Bernoulli(1.0 - p));
            x * keep / (1.0 - p)
        } else {
            self.dropout.forward(x)
        };
        let x = x.cast(a.dtype());
        let h = linear(x, a, None);
        linear(h, self.b.val(), None) * self.scale
    }

    /// The dense update `scale * A B`, `[in, out]`.
    pub fn delta(&self) -> Tensor<B, 2> {
        self.a.val().matmul(self.b.val()) * self.scale
    }
}
