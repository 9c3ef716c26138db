#!/usr/bin/env python3
"""bitsandbytes' NF4 (double quantisation) on a set of tensors and on the tiny golden model: the
reference our `dllm_model::nf4` and NF4 loading are tested against.

Writes `fixtures/nf4/reference.safetensors` (and `reference.json`, what was run):

  case.<name>.input             the tensor quantised (f32 or bf16, 2-D)
  case.<name>.packed            `quantize_4bit(.., quant_type="nf4", compress_statistics=True)`'s
                                packed bytes, uint8 [n/2, 1]
  case.<name>.absmax            the first-level absmax of the same call without double quantisation
  case.<name>.nested_codes      the double-quantised absmax codes (uint8)
  case.<name>.nested_absmax     the second-level absmax (f32, one per 256 first-level values)
  case.<name>.nested_offset     the mean subtracted before the second level ([1] f32)
  case.<name>.quant_map         the NF4 codebook, case.<name>.nested_quant_map the dynamic map
  case.<name>.dequantized       `dequantize_4bit` of the double-quantised state, in the input's dtype
  model.input_ids               the golden model's input ids [2, 24]
  model.logits                  the golden model (cast to bf16, block linears quantised with
                                bitsandbytes) run in f32 on bitsandbytes' dequantised weights
  model.logits_bf16             the same model without quantisation (a control: what the bf16
                                rounding alone gives)
  model.<linear>.packed/.nested_codes/...   that model's quantised linears, as above

and `fixtures/nf4/llada-tiny-nf4/`: that quantised model as a checkpoint in the layout
transformers + bitsandbytes save (`QuantState.as_dict(packed=True)` for each block linear, the
other tensors bf16, `quantization_config` in `config.json`): a user's pre-quantised checkpoint.

With `--check DIR --ours LOGITS` it instead loads a checkpoint written by `dmpo quantize` the way
transformers + bitsandbytes do (`BitsAndBytesConfig` from its `quantization_config`, the block
linears replaced by `bnb.nn.Linear4bit`, the packed state loaded through its state-dict hooks) and
checks that its logits for `input_ids.safetensors` equal ours (`dmpo logits` on the same
directory) within 1e-4.

Usage (bitsandbytes >= 0.50: its CPU backend quantises NF4):

    python3 -m venv venv && venv/bin/pip install torch safetensors transformers bitsandbytes
    venv/bin/python scripts/nf4_reference.py --golden fixtures/llada-tiny --out fixtures/nf4
    target/release/dmpo quantize --model fixtures/llada-tiny --out OUT/quantized
    target/release/dmpo logits --model OUT/quantized --input fixtures/nf4/input_ids.safetensors \\
        --output OUT/ours.safetensors
    venv/bin/python scripts/nf4_reference.py --golden fixtures/llada-tiny --out fixtures/nf4 \\
        --check OUT/quantized --ours OUT/ours.safetensors
"""

import argparse
import json
import os
import sys

import bitsandbytes as bnb
import bitsandbytes.functional as bf
import torch
from safetensors.torch import load_file, save_file
from transformers import BitsAndBytesConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_gpu  # noqa: E402  (the f32 LLaDA reference, checked against the golden logits)

LINEARS = ["q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"]


def cases():
    """Tensors that exercise every rule: normal weights, outliers, a zero block, values on the
    codebook's midpoints, a length that is not a multiple of 64, bf16 input."""
    g = torch.Generator().manual_seed(0)
    out = {}
    out["normal"] = torch.randn(96, 128, generator=g) * 0.02
    outliers = torch.randn(64, 192, generator=g) * 0.02
    outliers[3, 5] = 1.5
    outliers[40, 100] = -3.0
    out["outliers"] = outliers
    zero = torch.randn(32, 128, generator=g)
    zero[1, :64] = 0.0  # one all-zero block
    out["zero_block"] = zero
    code = bf.get_4bit_type("nf4", device="cpu")
    mid = (code[:-1] + code[1:]) / 2
    ties = torch.zeros(4, 64)
    ties[:, 0] = 1.0  # absmax 1: the other values land exactly on the midpoints
    ties[:, 1:16] = mid
    ties[:, 16:31] = mid
    ties[:, 31:46] = -mid
    out["midpoints"] = ties
    out["ragged"] = torch.randn(5, 100, generator=g)  # 500 values: the last block holds 52
    out["bf16"] = (torch.randn(64, 256, generator=g) * 0.05).to(torch.bfloat16)
    # Enough first-level blocks for two second-level blocks of 256 and a partial third.
    out["many_blocks"] = torch.randn(300, 128, generator=g) * torch.linspace(0.001, 0.1, 128)
    return out


def quantise(name, t, into, checkpoint=None, weight=None):
    """bitsandbytes' NF4 of `t` (double quantised) and its parts, under `{name}.`; with
    `checkpoint`, also the tensors `Linear4bit` saves for `weight`."""
    packed, state = bf.quantize_4bit(t, blocksize=64, compress_statistics=True, quant_type="nf4")
    if checkpoint is not None:
        checkpoint[weight] = packed
        for k, v in state.as_dict(packed=True).items():
            checkpoint[f"{weight}.{k}"] = v
    _, plain = bf.quantize_4bit(t, blocksize=64, compress_statistics=False, quant_type="nf4")
    into[f"{name}.input"] = t.contiguous()
    into[f"{name}.packed"] = packed.contiguous()
    into[f"{name}.absmax"] = plain.absmax.contiguous()
    into[f"{name}.nested_codes"] = state.absmax.contiguous()
    into[f"{name}.nested_absmax"] = state.state2.absmax.contiguous()
    into[f"{name}.nested_offset"] = state.offset.reshape(1).float()
    into[f"{name}.quant_map"] = state.code.contiguous()
    into[f"{name}.nested_quant_map"] = state.state2.code.contiguous()
    into[f"{name}.dequantized"] = bf.dequantize_4bit(packed, state).contiguous()
    return bf.dequantize_4bit(packed, state)


def quantised_model(golden):
    """The golden model in bf16 with its block linears replaced by bitsandbytes' dequantised NF4
    weights, run in f32; the quantised parts go into the fixture."""
    cfg = json.load(open(os.path.join(golden, "config.json")))
    state = {k: v.to(torch.bfloat16) for k, v in load_file(os.path.join(golden, "model.safetensors")).items()}
    parts, checkpoint = {}, {}
    for name in list(state):
        if any(name.endswith(f".{l}.weight") for l in LINEARS) and ".blocks." in name:
            state[name] = quantise(f"model.{name}", state[name], parts, checkpoint, name)
        else:
            checkpoint[name] = state[name]
    model = reference_gpu.build_model(cfg, "cpu", torch.float32, {k: v.float() for k, v in state.items()})
    cfg = dict(cfg)
    cfg["quantization_config"] = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    ).to_dict()
    return cfg, model, parts, checkpoint


def check(out, ours_dir, ours_logits):
    """`dmpo quantize`'s output loaded through transformers' config and bitsandbytes' modules."""
    cfg = json.load(open(os.path.join(ours_dir, "config.json")))
    qc = BitsAndBytesConfig.from_dict(cfg["quantization_config"])
    assert qc.load_in_4bit and qc.bnb_4bit_quant_type == "nf4" and qc.bnb_4bit_use_double_quant, qc
    state = load_file(os.path.join(ours_dir, "model.safetensors"))
    model = reference_gpu.Llada(cfg, torch.float32)
    linear_names = {f"model.transformer.blocks.{i}.{l}.weight" for i in range(cfg["n_layers"]) for l in LINEARS}
    quantised = {k for k in state if any(k == n or k.startswith(n + ".") for n in linear_names)}
    rest = {k: v.float() for k, v in state.items() if k not in quantised}
    missing, unexpected = model.load_state_dict(rest, strict=False)
    assert not unexpected and set(missing) == linear_names, (unexpected, missing)
    for i, block in enumerate(model.model.transformer["blocks"]):
        for l in LINEARS:
            old = getattr(block, l)
            new = bnb.nn.Linear4bit(
                old.in_features,
                old.out_features,
                bias=False,
                compute_dtype=torch.float32,
                compress_statistics=True,
                quant_type="nf4",
            )
            # What transformers' bitsandbytes quantiser does for each pre-quantised weight.
            name = f"model.transformer.blocks.{i}.{l}.weight"
            stats = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}
            new.weight = bnb.nn.Params4bit.from_prequantized(
                data=state[name], quantized_stats=stats, requires_grad=False, device="cpu", module=new
            )
            # On AVX512-BF16 CPUs bitsandbytes' inference path repacks the weight for a bf16 kernel
            # (`_convert_weight_packed_for_cpu`); the training and GPU path decodes the weight
            # and multiplies in the compute dtype, which is what is compared here.
            new.support_avx512bf16_for_cpu = False
            setattr(block, l, new)
    model.eval()
    ids = load_file(os.path.join(out, "input_ids.safetensors"))["input_ids"]
    with torch.no_grad():
        got = model(ids).float()
    want = load_file(ours_logits)["logits"]
    diff = float((got - want).abs().max())
    print(f"dmpo quantize output through bitsandbytes vs dmpo logits: max |diff| {diff:.2e} (tolerance 1e-4)")
    return diff <= 1e-4


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--golden", required=True, help="the tiny golden model directory (fixtures/llada-tiny)")
    p.add_argument("--out", required=True, help="where reference.safetensors goes (fixtures/nf4)")
    p.add_argument("--check", help="a directory written by `dmpo quantize` to load with bitsandbytes")
    p.add_argument("--ours", help="with --check: `dmpo logits` of that directory for input_ids.safetensors")
    args = p.parse_args()
    torch.manual_seed(0)
    if args.check:
        sys.exit(0 if check(args.out, args.check, args.ours) else 1)
    tensors = {}
    for name, t in cases().items():
        quantise(f"case.{name}", t, tensors)
    cfg, model, parts, checkpoint = quantised_model(args.golden)
    tensors.update(parts)
    model_dir = os.path.join(args.out, "llada-tiny-nf4")
    os.makedirs(model_dir, exist_ok=True)
    save_file({k: v.contiguous() for k, v in checkpoint.items()}, os.path.join(model_dir, "model.safetensors"), metadata={"format": "pt"})
    json.dump(cfg, open(os.path.join(model_dir, "config.json"), "w"), indent=2)
    golden = load_file(os.path.join(args.golden, "golden.safetensors"))
    state = load_file(os.path.join(args.golden, "model.safetensors"))
    dense = reference_gpu.build_model(cfg, "cpu", torch.float32, {k: v.to(torch.bfloat16).float() for k, v in state.items()})
    with torch.no_grad():
        tensors["model.input_ids"] = golden["input_ids"]
        tensors["model.logits"] = model(golden["input_ids"]).float()
        tensors["model.logits_bf16"] = dense(golden["input_ids"]).float()
    save_file({"input_ids": golden["input_ids"].contiguous()}, os.path.join(args.out, "input_ids.safetensors"))
    os.makedirs(args.out, exist_ok=True)
    save_file(tensors, os.path.join(args.out, "reference.safetensors"))
    meta = {
        "bitsandbytes": bnb.__version__,
        "torch": torch.__version__,
        "cases": sorted(cases()),
        "command": " ".join(sys.argv),
    }
    json.dump(meta, open(os.path.join(args.out, "reference.json"), "w"), indent=1)
    print(f"wrote {len(tensors)} tensors to {args.out}/reference.safetensors")


if __name__ == "__main__":
    main()
