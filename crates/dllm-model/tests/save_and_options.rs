//! Saving in the HF layout, the key-padding mask, the KV cache, grouped-query attention and
//! dtype options.

mod common;

use burn::tensor::{Bool, Int, Tensor, TensorData};
use common::*;
use dllm_model::tensor_file::read_ints;
use dllm_model::{
    load_model, save_model, DiffusionLm, ForwardOptions, KvCache, LoadOptions, LogitPositions,
    ModelConfig, WeightDType,
};

type B = burn::backend::Flex;

fn base() -> DiffusionLm<B> {
    load_model::<B>(tiny_dir(), LoadOptions::default(), &Default::default()).unwrap()
}

fn ids() -> Vec<i64> {
    read_ints(golden(), "input_ids").unwrap().values
}

fn tensor(ids: Vec<i64>, b: usize, t: usize) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(ids, [b, t]), &Default::default())
}

fn values(t: Tensor<B, 3>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn save_round_trip_is_exact() {
    let model = base();
    let dir = tempfile::tempdir().unwrap();
    save_model(&model, dir.path()).unwrap();
    // Same tensor bytes as the original checkpoint.
    for name in dllm_model::tensor_file::names(tiny_dir().join("model.safetensors")).unwrap() {
        let a = dllm_model::tensor_file::read_floats(tiny_dir().join("model.safetensors"), &name)
            .unwrap();
        let b = dllm_model::tensor_file::read_floats(dir.path().join("model.safetensors"), &name)
            .unwrap();
        assert_eq!(a, b, "{name}");
    }
    let again = load_model::<B>(dir.path(), LoadOptions::default(), &Default::default()).unwrap();
    assert_eq!(again.config, model.config);
    assert_eq!(
        values(again.forward(tensor(ids(), 2, 24))),
        values(model.forward(tensor(ids(), 2, 24)))
    );
}

#[test]
fn key_padding_mask_makes_left_padding_invisible() {
    let model = base();
    let row: Vec<i64> = ids()[..24].to_vec();
    let alone = values(model.forward(tensor(row[4..].to_vec(), 1, 20)));
    // The same 20 tokens behind 4 pad tokens.
    let mut padded = vec![298i64; 4];
    padded.extend_from_slice(&row[4..]);
    let mask = Tensor::<B, 2, Bool>::from_data(
        TensorData::new((0..24).map(|i| i < 4).collect::<Vec<bool>>(), [1, 24]),
        &Default::default(),
    );
    let opts = ForwardOptions {
        key_padding: Some(mask),
        adapter: true,
    };
    // Positions shift by 4 under padding, so compare against the unpadded run shifted too:
    // RoPE is relative, so attention scores depend only on position differences.
    let masked = values(model.forward_with(
        tensor(padded.clone(), 1, 24),
        &opts,
        &LogitPositions::Range(4..24),
    ));
    assert!(
        max_diff(&masked, &alone) < 1e-4,
        "{}",
        max_diff(&masked, &alone)
    );
    // Without the mask (the reference behaviour) the pads are attended and the logits move.
    let unmasked = values(model.forward_with(
        tensor(padded, 1, 24),
        &ForwardOptions::default(),
        &LogitPositions::Range(4..24),
    ));
    assert!(max_diff(&unmasked, &alone) > 1e-3);
}

#[test]
fn kv_cache_refreshed_equals_full_forward() {
    let model = base();
    let x = tensor(ids(), 2, 24);
    let full = values(model.forward(x.clone()));
    let mut cache = KvCache::new();
    let filled = values(model.forward_fill_cache(
        x.clone(),
        &ForwardOptions::default(),
        &LogitPositions::All,
        &mut cache,
    ));
    assert_eq!(filled, full);
    assert_eq!(cache.len(), 24);
    // Re-running a span against a cache of the same sequence gives the same logits.
    for (start, len) in [(8usize, 16usize), (8, 8), (0, 24), (16, 8)] {
        let span = x.clone().narrow(1, start, len);
        let got = values(model.forward_cached(
            span,
            start,
            &ForwardOptions::default(),
            &LogitPositions::All,
            &cache,
        ));
        let vocab = 300;
        let mut want = Vec::new();
        for b in 0..2 {
            want.extend_from_slice(&full[(b * 24 + start) * vocab..(b * 24 + start + len) * vocab]);
        }
        assert!(max_diff(&got, &want) < 1e-4, "span {start}+{len}");
    }
}

#[test]
fn logits_at_gathered_positions() {
    let model = base();
    let x = tensor(ids(), 2, 24);
    let full = values(model.forward(x.clone()));
    let pos = Tensor::<B, 2, Int>::from_data(
        TensorData::new(vec![3i64, 20, 0, 23], [2, 2]),
        &Default::default(),
    );
    let got =
        values(model.forward_with(x, &ForwardOptions::default(), &LogitPositions::Gather(pos)));
    for (k, (b, p)) in [(0usize, 3usize), (0, 20), (1, 0), (1, 23)]
        .into_iter()
        .enumerate()
    {
        assert_eq!(
            &got[k * 300..(k + 1) * 300],
            &full[(b * 24 + p) * 300..(b * 24 + p + 1) * 300]
        );
    }
}

#[test]
fn grouped_query_attention_equals_repeated_heads() {
    // A GQA model (2 KV heads for 4 query heads) equals an MHA model whose K/V weights repeat
    // each KV head for its two query heads (repeat_interleave semantics).
    let mut cfg = ModelConfig::tiny(32, 1, 4, 64, 50, 49, 48);
    cfg.n_kv_heads = Some(2);
    let device = Default::default();
    let gqa = DiffusionLm::<B>::init(&cfg, &device);
    let mut mha_cfg = cfg.clone();
    mha_cfg.n_kv_heads = Some(4);
    let mut mha = DiffusionLm::<B>::init(&mha_cfg, &device);
    mha.wte = gqa.wte.clone();
    mha.head = Some(dllm_model::linear::Linear::from_weight(
        gqa.head.as_ref().unwrap().weight.val(),
    ));
    let g = &gqa.blocks[0];
    let m = &mut mha.blocks[0];
    let repeat = |w: Tensor<B, 2>| {
        // [d, kv*hd] -> [d, kv, 1, hd] -> [d, kv, 2, hd] -> [d, 4*hd]
        let [d, _] = w.dims();
        w.reshape([d, 2, 1, 8])
            .expand([d, 2, 2, 8])
            .reshape([d, 32])
    };
    m.attn.q_proj = dllm_model::linear::Linear::from_weight(g.attn.q_proj.weight.val());
    m.attn.k_proj = dllm_model::linear::Linear::from_weight(repeat(g.attn.k_proj.weight.val()));
    m.attn.v_proj = dllm_model::linear::Linear::from_weight(repeat(g.attn.v_proj.weight.val()));
    m.attn.attn_out = dllm_model::linear::Linear::from_weight(g.attn.attn_out.weight.val());
    m.ff_proj = dllm_model::linear::Linear::from_weight(g.ff_proj.weight.val());
    m.up_proj = dllm_model::linear::Linear::from_weight(g.up_proj.weight.val());
    m.ff_out = dllm_model::linear::Linear::from_weight(g.ff_out.weight.val());
    let x = tensor((0..10).collect(), 1, 10);
    let d = max_diff(&values(gqa.forward(x.clone())), &values(mha.forward(x)));
    assert!(d < 1e-5, "{d}");
}

#[test]
fn bf16_load_option_keeps_half_precision() {
    let model = load_model::<B>(
        tiny_dir(),
        LoadOptions {
            dtype: WeightDType::BF16,
            quantize: None,
        },
        &Default::default(),
    )
    .unwrap();
    assert_eq!(model.wte.val().dtype(), burn::tensor::DType::BF16);
    let want = values(base().forward(tensor(ids(), 2, 24)));
    let got = values(model.forward(tensor(ids(), 2, 24)));
    // bf16 keeps ~3 significant digits; logits are O(1-6).
    assert!(max_diff(&got, &want) < 0.5);
}
