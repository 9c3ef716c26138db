"""Builds a tiny random Dream checkpoint and records what the reference PyTorch code computes on
it, for the Rust side's Dream golden tests (the Dream model-family issue).

The reference is Dream's own modeling and generation code as shipped with
`Dream-org/Dream-v0-Instruct-7B` (`configuration_dream.py`, `modeling_dream.py`,
`generation_utils.py`, `__init__.py`); `ZHZisZZ/dllm` keeps copies under
`dllm/pipelines/dream/models/`. The script imports them from the directory given with
`--reference`; they are inputs, never copied into this repository.

    python3 -m venv .venv-dream
    .venv-dream/bin/pip install torch==2.5.1 transformers==4.46.2 safetensors
    .venv-dream/bin/python scripts/dream_golden.py --reference PATH/TO/models \
        --out fixtures/golden-dream

Writes into `--out`:
- `config.json`, `model.safetensors`: the tiny checkpoint in Dream's layout (f32): grouped-query
  attention (4 query heads, 2 key/value heads), biases on q/k/v only, untied embeddings,
  random weights scaled up so that greedy decisions are decisive;
- `golden.safetensors`: `input_ids` [2, 16]; `logits` [2, 16, V] of a plain forward;
  `padded_input_ids`, `padded_attention_mask` [2, 16] (row 0 left-padded by 4) and
  `padded_logits` (the forward with the 4-D mask and position ids Dream's sampler builds from
  the padding mask; zero at padded positions, whose rows attend to nothing and are NaN in the
  reference); `prompt_ids` [2, 6] and, per algorithm, `generation_{alg}` [2, 6 + 12]: greedy
  `diffusion_generate` (temperature 0, 12 steps) with `alg` maskgit_plus, topk_margin, entropy;
- with `--fast-dllm PATH` (Fast-dLLM's `dream/model/`): `block_{prefix,dual}_entropy` and
  `block_{prefix,dual}_threshold` [2, 6 + 12]: Fast-dLLM's block-wise Dream sampler
  (`generation_utils_block.py`) on the same checkpoint, block length 4, 12 steps, greedy, `alg`
  entropy or `confidence_threshold` (threshold 0.9), each row generated alone (its threshold
  branch handles one row);
- `golden_train.safetensors`: one DMPO (WDCE) update of the whole model by the reference's
  formulas on Dream's reference forward: the `generation_entropy` sequences as a group of 2,
  `train_masks` [K * 2, 12] (K = 2 replicates, replicate-major), fixed weights `w_plus`,
  `w_minus` (negative centering, `A = w+ - w-`), `loss = sum_r -A_i / (K m_r) sum_{j masked}
  log softmax(shifted logits)[x_j]`; `train_loss`, `grad.<name>` and `after.<name>` (every
  parameter after one `torch.optim.AdamW` step, lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight
  decay 0.01);
- `golden.json`: the settings above, for the Rust test to read.

`alg = "origin"` is not recorded: it picks the positions to unmask with `torch.rand`, which
no other implementation reproduces; its token choice is the greedy one the others also test.
The logits Dream returns at position `i` predict token `i + 1`: the raw logits are recorded,
and the sampler's shift (`cat([logits[:, :1], logits[:, :-1]])`) is the Rust side's to apply.
"""

import argparse
import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

VOCAB = 320
MASK, PAD, EOS = 319, 318, 317
ALGORITHMS = ["maskgit_plus", "topk_margin", "entropy"]
GEN_LENGTH, STEPS = 12, 12


def load_reference(directory: Path, name: str = "dream_reference"):
    """Imports a reference package (its modules use relative imports) as `name`."""
    spec = importlib.util.spec_from_file_location(
        name,
        directory / "__init__.py",
        submodule_search_locations=[str(directory)],
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


BLOCK_LENGTH, THRESHOLD = 4, 0.9


def fast_dllm_generations(directory: Path, checkpoint: Path, prompt_ids: torch.Tensor):
    """Fast-dLLM's block-wise Dream sampler on the saved checkpoint, row by row."""
    fast = load_reference(directory, "fast_dllm_dream")
    block = importlib.import_module("fast_dllm_dream.generation_utils_block")
    model = fast.DreamModel.from_pretrained(checkpoint, torch_dtype=torch.float32).eval()
    # As Fast-dLLM's eval.py: the block-wise methods bound over the model's own.
    for method in ["diffusion_generate", "_sample"]:
        bound = types.MethodType(getattr(block.DreamGenerationMixin, method), model)
        setattr(model, method, bound)
    out = {}
    for dual in [False, True]:
        for alg, name in [("entropy", "entropy"), ("confidence_threshold", "threshold")]:
            rows = []
            for row in prompt_ids:
                config = block.DreamGenerationConfig(
                    max_new_tokens=GEN_LENGTH,
                    steps=STEPS,
                    temperature=0.0,
                    alg=alg,
                    alg_temp=0.0,
                    return_dict_in_generate=True,
                    mask_token_id=MASK,
                    pad_token_id=PAD,
                    bos_token_id=PAD,
                    eos_token_id=EOS,
                )
                result = model.diffusion_generate(
                    row[None],
                    generation_config=config,
                    block_length=BLOCK_LENGTH,
                    threshold=THRESHOLD,
                    dual_cache=dual,
                )
                rows.append(getattr(result, "sequences", result)[0])
            out[f"block_{'dual' if dual else 'prefix'}_{name}"] = torch.stack(rows)
    return out


def tiny_model(reference):
    config = reference.DreamConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        mask_token_id=MASK,
        pad_token_id=PAD,
        bos_token_id=PAD,
        eos_token_id=EOS,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = reference.DreamModel(config).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return model


def padded_forward_inputs(attention_mask: torch.Tensor):
    """The 4-D mask and position ids Dream's `_sample` builds from a [B, N] padding mask."""
    tok_idx = attention_mask.long().cumsum(-1) - 1
    tok_idx.masked_fill_(attention_mask == 0, 1)
    mask = torch.logical_and(
        attention_mask.unsqueeze(1).unsqueeze(-2),
        attention_mask.unsqueeze(1).unsqueeze(-1),
    )
    return mask, tok_idx


TRAIN = {"replicates": 2, "w_plus": [0.7, 0.3], "w_minus": [0.2, 0.8], "lr": 1e-3,
         "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01}


def dmpo_update(model, sequences: torch.Tensor, prompt_len: int):
    """One WDCE update by the reference's formulas (docs/algorithm.md §4), on Dream's forward."""
    k = TRAIN["replicates"]
    n, total = sequences.shape
    gen = total - prompt_len
    g = torch.Generator().manual_seed(7)
    rates = torch.tensor([0.3, 0.6, 0.5, 0.9])[: k * n, None]
    masks = torch.rand((k * n, gen), generator=g) < rates
    targets = sequences.repeat(k, 1)  # row r = k * n + i is sample i
    inputs = targets.clone()
    inputs[:, prompt_len:][masks] = MASK
    model.zero_grad()
    logits = model(inputs).logits.float()
    logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    sums = (logp[:, prompt_len:] * masks).sum(-1)
    advantages = torch.tensor(TRAIN["w_plus"]) - torch.tensor(TRAIN["w_minus"])
    m = masks.sum(-1).clamp(min=1)
    coef = -advantages[torch.arange(k * n) % n] / (k * m)
    loss = (sums * coef).sum()
    loss.backward()
    out = {"train_masks": masks.long(), "train_loss": loss.detach().reshape(1)}
    for name, p in model.named_parameters():
        out[f"grad.{name}"] = p.grad.detach().clone()
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=TRAIN["lr"],
        betas=tuple(TRAIN["betas"]),
        eps=TRAIN["eps"],
        weight_decay=TRAIN["weight_decay"],
    )
    opt.step()
    for name, p in model.named_parameters():
        out[f"after.{name}"] = p.detach().clone()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fast-dllm", type=Path, help="Fast-dLLM's dream/model directory")
    args = parser.parse_args()
    reference = load_reference(args.reference)
    model = tiny_model(reference)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)

    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, EOS, (2, 16), generator=g)
    input_ids[0, 5] = MASK
    input_ids[1, 9:12] = MASK
    golden = {"input_ids": input_ids}
    with torch.no_grad():
        golden["logits"] = model(input_ids).logits.float()

        padded = input_ids.clone()
        padded[0, :4] = PAD
        attention_mask = torch.ones_like(padded)
        attention_mask[0, :4] = 0
        mask, tok_idx = padded_forward_inputs(attention_mask)
        logits = model(padded, mask, tok_idx).logits.float()
        logits[attention_mask == 0] = 0.0
        golden["padded_input_ids"] = padded
        golden["padded_attention_mask"] = attention_mask
        golden["padded_logits"] = logits

        prompt_ids = torch.randint(0, EOS, (2, 6), generator=g)
        golden["prompt_ids"] = prompt_ids
        config_class = sys.modules["dream_reference.generation_utils"].DreamGenerationConfig
        for alg in ALGORITHMS:
            # An explicit configuration: with this transformers, one built from the model's
            # config lacks `return_dict_in_generate` (the sequences come back as a tensor or
            # in an output with `sequences`, by version).
            config = config_class(
                max_new_tokens=GEN_LENGTH,
                steps=STEPS,
                temperature=0.0,
                alg=alg,
                alg_temp=0.0,
                output_history=False,
                return_dict_in_generate=True,
                mask_token_id=MASK,
                pad_token_id=PAD,
                bos_token_id=PAD,
                eos_token_id=EOS,
            )
            out = model.diffusion_generate(prompt_ids, generation_config=config)
            golden[f"generation_{alg}"] = getattr(out, "sequences", out)
        if args.fast_dllm is not None:
            golden.update(fast_dllm_generations(args.fast_dllm, args.out, prompt_ids))

    save_file(
        {k: v.contiguous() for k, v in golden.items()},
        str(args.out / "golden.safetensors"),
    )
    train = dmpo_update(model, golden["generation_entropy"], prompt_ids.shape[1])
    save_file(
        {k: v.contiguous() for k, v in train.items()},
        str(args.out / "golden_train.safetensors"),
    )
    meta = {
        "mask_token_id": MASK,
        "pad_token_id": PAD,
        "eos_token_id": EOS,
        "algorithms": ALGORITHMS,
        "gen_length": GEN_LENGTH,
        "steps": STEPS,
        "temperature": 0.0,
        "alg_temp": 0.0,
        "padded_rows": {"0": 4},
        "train": TRAIN,
        "block_length": BLOCK_LENGTH if args.fast_dllm is not None else None,
        "threshold": THRESHOLD if args.fast_dllm is not None else None,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
    }
    (args.out / "golden.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
