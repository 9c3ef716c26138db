//! The tiny Dream checkpoint (`fixtures/golden-dream`, made by `scripts/dream_golden.py` with
//! Dream's own modeling code) reproduces the reference logits, plain and left-padded, shifted so
//! that the logit of position i predicts token i (docs/architecture.md, "Model families").

mod common;

use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};
use common::*;
use dllm_model::tensor_file::{read_floats, read_ints};
use dllm_model::{
    load_model, save_model, Family, ForwardOptions, LoadOptions, LogitPositions, LoraConfig,
};

fn dream_dir() -> std::path::PathBuf {
    fixtures().join("golden-dream")
}

fn dream_golden() -> std::path::PathBuf {
    dream_dir().join("golden.safetensors")
}

/// The reference's raw logits `[b, n, v]` shifted as Dream's sampler does:
/// `cat(logits[:, :1], logits[:, :-1])`.
fn shifted(raw: &[f64], [b, n, v]: [usize; 3]) -> Vec<f64> {
    let mut out = Vec::with_capacity(raw.len());
    for r in 0..b {
        for p in 0..n {
            let from = p.saturating_sub(1);
            out.extend_from_slice(&raw[(r * n + from) * v..(r * n + from + 1) * v]);
        }
    }
    out
}

fn ids<B: Backend>(name: &str, device: &B::Device) -> (Tensor<B, 2, Int>, [usize; 2]) {
    let t = read_ints(dream_golden(), name).unwrap();
    let shape = [t.shape[0], t.shape[1]];
    (
        Tensor::from_data(TensorData::new(t.values, shape), device),
        shape,
    )
}

fn as_f32<B: Backend>(t: Tensor<B, 3>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

fn dream_logits<B: Backend>() {
    let device = Default::default();
    let model = load_model::<B>(dream_dir(), LoadOptions::default(), &device).expect("load");
    assert_eq!(model.config.family, Family::Dream);
    let (input, [b, n]) = ids::<B>("input_ids", &device);
    let raw = read_floats(dream_golden(), "logits").unwrap();
    let v = raw.shape[2];
    let want = shifted(&raw.values, [b, n, v]);
    let logits = model.forward(input.clone());
    assert_eq!(logits.dims(), [b, n, v]);
    let got = as_f32(logits);
    let diff = max_abs_diff(&got, &want);
    assert!(diff <= 1e-4, "plain logits: max abs diff {diff}");

    // Every way of choosing positions sees the same aligned logits.
    let at = |positions: LogitPositions<B>| {
        as_f32(model.forward_with(input.clone(), &ForwardOptions::default(), &positions))
    };
    let row = |r: usize, p: usize| &got[(r * n + p) * v..(r * n + p + 1) * v];
    for range in [0..5, 3..9] {
        let part = at(LogitPositions::Range(range.clone()));
        for r in 0..b {
            for (k, p) in range.clone().enumerate() {
                let len = range.len();
                assert_eq!(&part[(r * len + k) * v..(r * len + k + 1) * v], row(r, p));
            }
        }
    }
    let gather =
        Tensor::<B, 2, Int>::from_data(TensorData::new(vec![0i64, 7, 15, 1], [2, 2]), &device);
    let part = at(LogitPositions::Gather(gather));
    for (k, (r, p)) in [(0, 0), (0, 7), (1, 15), (1, 1)].into_iter().enumerate() {
        assert_eq!(&part[k * v..(k + 1) * v], row(r, p));
    }
    let flat = Tensor::<B, 1, Int>::from_data(TensorData::new(vec![0i64, 5, 16, 31], [4]), &device);
    let part = at(LogitPositions::Flat(flat));
    for (k, (r, p)) in [(0, 0), (0, 5), (1, 0), (1, 15)].into_iter().enumerate() {
        assert_eq!(&part[k * v..(k + 1) * v], row(r, p));
    }

    // Left padding: positions counted from the first real token, padded keys hidden.
    let (padded, [pb, pn]) = ids::<B>("padded_input_ids", &device);
    let mask = read_ints(dream_golden(), "padded_attention_mask").unwrap();
    let padding: Vec<bool> = mask.values.iter().map(|&m| m == 0).collect();
    let key_padding =
        Tensor::<B, 2, Bool>::from_data(TensorData::new(padding.clone(), [pb, pn]), &device);
    let options = ForwardOptions {
        key_padding: Some(key_padding),
        adapter: true,
    };
    let got = as_f32(model.forward_with(padded, &options, &LogitPositions::All));
    let raw = read_floats(dream_golden(), "padded_logits").unwrap();
    let want = shifted(&raw.values, [pb, pn, v]);
    let mut worst = 0.0f64;
    for r in 0..pb {
        for p in 0..pn {
            // Positions whose aligned logit comes from a padded position are undefined (NaN in
            // the reference, zeroed in the file); the first real token's comes from padding.
            let from = r * pn + p.saturating_sub(1);
            if padding[r * pn + p] || padding[from] {
                continue;
            }
            for k in 0..v {
                let i = (r * pn + p) * v + k;
                worst = worst.max((got[i] as f64 - want[i]).abs());
            }
        }
    }
    assert!(worst <= 1e-4, "padded logits: max abs diff {worst}");
}

#[test]
fn dream_golden_logits_flex() {
    dream_logits::<burn::backend::Flex>();
}

#[test]
fn dream_golden_logits_ndarray() {
    dream_logits::<burn::backend::NdArray>();
}

#[test]
fn a_dream_checkpoint_saves_in_its_own_layout_and_adapters_use_its_names() {
    type B = burn::backend::Flex;
    let device = Default::default();
    let model = load_model::<B>(dream_dir(), LoadOptions::default(), &device).unwrap();
    let out = tempfile::tempdir().unwrap();
    save_model(&model, out.path()).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["model_type"], "Dream");
    assert_eq!(config["hidden_size"], 64);
    assert_eq!(config["num_key_value_heads"], 2);
    assert!(config.get("d_model").is_none());
    let again = load_model::<B>(out.path(), LoadOptions::default(), &device).unwrap();
    let (input, _) = ids::<B>("input_ids", &device);
    assert_eq!(
        as_f32(model.forward(input.clone())),
        as_f32(again.forward(input.clone()))
    );

    // LoRA targets in LLaDA's names reach Dream's layers; the adapter lists Dream's names.
    let lora = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.0,
        target_modules: vec!["q_proj".into(), "attn_out".into(), "ff_out".into()],
        use_rslora: false,
    };
    let adapted = model.with_lora(&lora, &device).unwrap();
    let dir = out.path().join("adapter");
    adapted.save_adapter(&dir, "tiny-dream").unwrap();
    let saved = dllm_model::lora::read_adapter_config(&dir).unwrap();
    assert_eq!(saved.target_modules, ["q_proj", "o_proj", "down_proj"]);
    let file = dir.join("adapter_model.safetensors");
    read_floats(
        &file,
        "base_model.model.model.layers.1.self_attn.o_proj.lora_A.weight",
    )
    .unwrap();
    read_floats(
        &file,
        "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight",
    )
    .unwrap();
    let back = again.load_adapter(&dir, &device).unwrap();
    assert_eq!(
        back.lora_config().unwrap().target_modules,
        saved.target_modules
    );
}

#[test]
fn dream_7b_config_reads_with_the_qwen25_7b_geometry() {
    let path = fixtures().join("configs/dream-7b-instruct.json");
    let c = dllm_model::ModelConfig::from_file(&path).unwrap();
    assert_eq!(c.family, Family::Dream);
    assert_eq!(
        (c.n_layers, c.d_model, c.n_heads, c.num_kv_heads()),
        (28, 3584, 28, 4)
    );
    assert_eq!(
        (c.mlp_hidden(), c.embed_size(), c.mask_token_id),
        (18944, 152064, 151666)
    );
    assert!(c.include_qkv_bias && !c.weight_tying);
    // Qwen2.5-7B's 7.62B parameters (biases included).
    let p = c.num_params();
    assert!((7_610_000_000..7_620_000_000).contains(&p), "{p}");
}

#[test]
fn bad_dream_configs_are_refused_by_their_own_keys() {
    let text = std::fs::read_to_string(dream_dir().join("config.json")).unwrap();
    let with = |key: &str, value: serde_json::Value| {
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v[key] = value;
        dllm_model::ModelConfig::from_json_str(&v.to_string(), "dream/config.json")
            .unwrap_err()
            .to_string()
    };
    let e = with("num_attention_heads", 3.into());
    assert!(
        e.contains("num_attention_heads") && e.contains("dream/config.json"),
        "{e}"
    );
    let e = with(
        "rope_scaling",
        serde_json::json!({"type": "yarn", "factor": 4.0}),
    );
    assert!(e.contains("rope_scaling"), "{e}");
    let e = with("use_sliding_window", true.into());
    assert!(e.contains("use_sliding_window"), "{e}");
    let e = with("hidden_act", "gelu".into());
    assert!(e.contains("hidden_act"), "{e}");
    let e = with("hidden_size", "big".into());
    assert!(e.contains("dream/config.json"), "{e}");
}
