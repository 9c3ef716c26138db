#!/usr/bin/env python3
"""Measure the PyTorch reference figures of `fixtures/bench` on *this* machine.

`fixtures/bench/reference_pytorch_cpu.json` was measured on another 2-core machine; its README
asks for both sides to be run in one sitting on an idle machine. This script re-measures the four
reference operations with PyTorch (f32, 2 threads) so that `cargo xtask bench --reference FILE`
can print ratios against figures taken on the same CPU:

  (a) forward, batch 4 x seq 256 (logits at every position)
  (b) forward + masked cross-entropy backward + AdamW step (lr 1e-4, wd 0.01), batch 4 x 256
  (c) LLaDA generation: batch 4, prompt 64, gen 192, block 32, 192 steps, low confidence, T = 0
  (d) the same with 96 steps

The model is a plain PyTorch transcription of the LLaDA block (RMSNorm in f32, rotate-half RoPE,
`F.scaled_dot_product_attention`, SwiGLU with `act(ff_proj(x)) * up_proj(x)`, untied head), and the
sampler follows LLaDA's `generate.py` step for step (full logits, softmax over the vocabulary,
top-k per row). It is checked against the golden outputs shipped with the model before timing:
argmax of (a), the token-exact generations of (c) and (d), and the six training losses of (b).

Usage (needs torch, safetensors, numpy):

    python3 scripts/reference_bench.py --dir fixtures/bench --out runs/reference_here.json
    cargo xtask bench --reference runs/reference_here.json
"""

import argparse
import json
import os
import platform
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def rms_norm(x, w, eps):
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return w * x.to(dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Llada(torch.nn.Module):
    """LLaDA's forward pass over the Hugging Face weight names."""

    def __init__(self, cfg, weights):
        super().__init__()
        self.cfg = cfg
        self.params = torch.nn.ParameterDict(
            {k.replace(".", "/"): torch.nn.Parameter(v.float()) for k, v in weights.items()}
        )
        hd = cfg["d_model"] // cfg["n_heads"]
        inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float) / hd))
        pos = torch.arange(cfg["max_sequence_length"], dtype=torch.float)
        freqs = torch.cat([torch.outer(pos, inv)] * 2, dim=-1)
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)

    def p(self, name):
        return self.params[("model.transformer." + name).replace(".", "/")]

    def forward(self, ids):
        cfg = self.cfg
        b, t = ids.shape
        nh, nkv = cfg["n_heads"], cfg.get("n_kv_heads") or cfg["n_heads"]
        hd = cfg["d_model"] // nh
        eps = cfg["rms_norm_eps"]
        cos, sin = self.cos[:t], self.sin[:t]
        x = F.embedding(ids, self.p("wte.weight"))
        for i in range(cfg["n_layers"]):
            blk = f"blocks.{i}."
            h = rms_norm(x, self.p(blk + "attn_norm.weight"), eps)
            q = F.linear(h, self.p(blk + "q_proj.weight")).view(b, t, nh, hd).transpose(1, 2)
            k = F.linear(h, self.p(blk + "k_proj.weight")).view(b, t, nkv, hd).transpose(1, 2)
            v = F.linear(h, self.p(blk + "v_proj.weight")).view(b, t, nkv, hd).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            if nkv != nh:
                k = k.repeat_interleave(nh // nkv, dim=1)
                v = v.repeat_interleave(nh // nkv, dim=1)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False)
            a = a.transpose(1, 2).reshape(b, t, nh * hd)
            x = x + F.linear(a, self.p(blk + "attn_out.weight"))
            h = rms_norm(x, self.p(blk + "ff_norm.weight"), eps)
            g = F.silu(F.linear(h, self.p(blk + "ff_proj.weight"))) * F.linear(h, self.p(blk + "up_proj.weight"))
            x = x + F.linear(g, self.p(blk + "ff_out.weight"))
        x = rms_norm(x, self.p("ln_f.weight"), eps)
        return F.linear(x, self.p("ff_out.weight"))


def num_transfer_tokens(mask_index, steps):
    n = mask_index.sum(dim=1, keepdim=True)
    base, rem = n // steps, n % steps
    out = torch.zeros(n.size(0), steps, dtype=torch.int64) + base
    for i in range(n.size(0)):
        out[i, : rem[i]] += 1
    return out


@torch.no_grad()
def generate(model, prompt, steps, gen_length, block_length, mask_id):
    """LLaDA `generate.py` at temperature 0 with low-confidence remasking."""
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, : prompt.shape[1]] = prompt
    blocks = gen_length // block_length
    steps = steps // blocks
    for nb in range(blocks):
        lo = prompt.shape[1] + nb * block_length
        hi = lo + block_length
        ntt = num_transfer_tokens(x[:, lo:hi] == mask_id, steps)
        for i in range(steps):
            mask_index = x == mask_id
            logits = model(x)
            x0 = torch.argmax(logits, dim=-1)
            p = F.softmax(logits.to(torch.float64), dim=-1)
            x0_p = torch.gather(p, -1, x0.unsqueeze(-1)).squeeze(-1)
            x0_p[:, hi:] = -float("inf")
            x0 = torch.where(mask_index, x0, x)
            conf = torch.where(mask_index, x0_p, torch.tensor(-float("inf"), dtype=x0_p.dtype))
            transfer = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(conf.shape[0]):
                _, idx = torch.topk(conf[j], k=int(ntt[j, i]))
                transfer[j, idx] = True
            x[transfer] = x0[transfer]
    return x


def timed(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return sorted(runs)[len(runs) // 2], runs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="fixtures/bench")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--skip-generate", action="store_true", help="measure (a) and (b) only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg = json.load(open(os.path.join(args.dir, "config.json")))
    golden = load_file(os.path.join(args.dir, "golden_bench.safetensors"))
    weights = load_file(os.path.join(args.dir, "model.safetensors"))
    mask_id = cfg["mask_token_id"]
    out = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "machine": platform.machine(),
        "dtype": "float32",
        "script": "scripts/reference_bench.py",
        "reps": args.reps,
    }
    with open("/proc/cpuinfo") as f:
        names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
    if names:
        out["cpu"] = f"{names[0]} x{len(names)}"

    model = Llada(cfg, weights).eval()

    # (a) forward, checked against the golden argmax.
    ids = golden["bench_noisy_ids"].long()
    with torch.no_grad():
        logits = model(ids)
        agree = int((logits.argmax(-1) == golden["argmax_all"].long()).sum())
        assert agree == ids.numel(), f"forward argmax agrees at {agree}/{ids.numel()} only"
        s, runs = timed(lambda: model(ids), 1, args.reps)
    out.update(a_forward_b4_s256_s=s, a_forward_tokens_per_s=ids.numel() / s, a_runs_s=runs)
    print(f"(a) forward b4 x 256: {s:.4f} s ({ids.numel() / s:.0f} tokens/s)")

    # (b) training step: the six golden losses are reproduced from the same initial weights.
    tokens = golden["bench_tokens"].long()
    loss_mask = golden["bench_loss_mask"].bool()

    def trainer():
        """A fresh model and AdamW, and one step that returns the loss."""
        m = Llada(cfg, weights)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.01)

        def step():
            logits = m(ids)
            loss = F.cross_entropy(logits[loss_mask], tokens[loss_mask])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return float(loss.detach())

        return step

    check = trainer()
    losses = [check() for _ in range(6)]
    want = golden["train_losses"].tolist()
    worst = max(abs(a - b) for a, b in zip(losses, want))
    print(f"(b) losses {['%.4f' % l for l in losses]} vs golden: worst difference {worst:.2e}")
    step = trainer()
    s, runs = timed(step, 1, args.reps)
    out.update(b_train_step_b4_s256_s=s, b_train_tokens_per_s=ids.numel() / s, b_runs_s=runs, b_losses=losses,
               b_golden_worst_abs_diff=worst)
    print(f"(b) train step b4 x 256: {s:.4f} s")

    if not args.skip_generate:
        prompt = golden["gen_prompts"].long()
        for key, steps, want in (("c", 192, "gen_steps192_out"), ("d", 96, "gen_steps96_out")):
            res = generate(model, prompt, steps, 192, 32, mask_id)
            same = int((res == golden[want].long()).sum())
            assert same == res.numel(), f"({key}) generation equals the golden one at {same}/{res.numel()} only"
            reps = max(1, min(args.reps, 3))
            s, runs = timed(lambda: generate(model, prompt, steps, 192, 32, mask_id), 0, reps)
            tps = prompt.shape[0] * 192 / s
            out.update({
                f"{key}_generate_steps{steps}_s": s,
                f"{key}_generate_steps{steps}_tokens_per_s": tps,
                f"{key}_generate_steps{steps}_s_per_step": s / steps,
                f"{key}_runs_s": runs,
            })
            print(f"({key}) generate steps {steps}: {s:.3f} s ({tps:.1f} generated tokens/s)")

    out["loadavg_after"] = list(os.getloadavg())
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
