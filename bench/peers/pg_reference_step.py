"""Time training steps of the Parameter Golf reference model (openai/parameter-golf
`train_gpt.py`) on random tokens: the PyTorch peer of bench/bench_cuda_gpt.cu.

The reference file is NOT part of this repository: fetch openai/parameter-golf and pass the
folder that holds its train_gpt.py with --reference. This script imports its GPT and Muon and
builds the step exactly as its main() does (bf16 model with fp32 CastedLinear weights and
low-dim parameters, autocast bf16, flash SDPA, Adam + Muon, 524,288 tokens per step through
gradient accumulation), in eager mode or under torch.compile.

  python3 bench/peers/pg_reference_step.py --reference /path/to/parameter-golf \
      --mode compile --steps 5 --warmup 3

The last stdout line is one JSON object (ms_per_step, tokens_per_s, peak_gib, ...).
"""
import argparse
import json
import sys
import time


def profile_one_step(torch, step, accum: int) -> None:
    """One step under torch.profiler: GPU time per kernel (top 50) and by kind, to stderr so the
    last stdout line stays the JSON summary."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    kernels = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            t, n = kernels.get(e.name, (0.0, 0))
            kernels[e.name] = (t + e.device_time_total, n + 1)
    total = sum(t for t, _ in kernels.values())
    kinds = {"attention (flash)": ("flash",), "GEMM": ("gemm", "nvjet", "cutlass", "xmma", "splitK"),
             "triton (fused elementwise)": ("triton",)}
    by_kind = {k: 0.0 for k in kinds}
    by_kind["other"] = 0.0
    for name, (t, _) in kernels.items():
        kind = next((k for k, keys in kinds.items() if any(s in name for s in keys)), "other")
        by_kind[kind] += t
    out = sys.stderr
    print(f"profile of one step: {total / 1000:.2f} ms of kernels, {sum(n for _, n in kernels.values())} "
          f"launches ({total / 1000 / accum:.2f} ms per micro-batch)", file=out)
    for k, t in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {k:28s} {t / 1000:8.2f} ms {100 * t / total:5.1f}%", file=out)
    for name, (t, n) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[:50]:
        print(f"  {t / 1000:8.3f} ms {n:5d}x  {name[:140]}", file=out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", required=True, help="folder holding the reference train_gpt.py")
    ap.add_argument("--mode", choices=["eager", "compile"], default="compile")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--tokens-per-step", type=int, default=524_288)
    ap.add_argument("--accum", type=int, default=8, help="micro-batches per step (train_gpt.py: 8 on one GPU)")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--profile", action="store_true",
                    help="after the timed steps, profile one step and print GPU time by kernel")
    a = ap.parse_args()

    sys.path.insert(0, a.reference)
    import torch
    import train_gpt as ref  # the reference module (its main() is not run)

    args = ref.Hyperparameters()
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    from torch.backends.cuda import enable_cudnn_sdp, enable_flash_sdp, enable_math_sdp, enable_mem_efficient_sdp
    enable_cudnn_sdp(False)
    enable_flash_sdp(True)
    enable_mem_efficient_sdp(False)
    enable_math_sdp(False)
    if a.mode == "compile":
        ref.zeropower_via_newtonschulz5 = torch.compile(ref.zeropower_via_newtonschulz5)

    model = ref.GPT(vocab_size=args.vocab_size, num_layers=args.num_layers, model_dim=args.model_dim,
                    num_heads=args.num_heads, num_kv_heads=args.num_kv_heads, mlp_mult=args.mlp_mult,
                    tie_embeddings=args.tie_embeddings, tied_embed_init_std=args.tied_embed_init_std,
                    logit_softcap=args.logit_softcap, rope_base=args.rope_base,
                    qk_gain_init=args.qk_gain_init).to(device).bfloat16()
    for m in model.modules():
        if isinstance(m, ref.CastedLinear):
            m.float()
    ref.restore_low_dim_params_to_fp32(model)
    run = torch.compile(model, dynamic=False, fullgraph=True) if a.mode == "compile" else model

    named = list(model.blocks.named_parameters())
    pats = ref.CONTROL_TENSOR_NAME_PATTERNS
    matrix = [p for n, p in named if p.ndim == 2 and not any(s in n for s in pats)]
    scalar = [p for n, p in named if p.ndim < 2 or any(s in n for s in pats)]
    if model.skip_weights.numel() > 0:
        scalar.append(model.skip_weights)
    opts = [
        torch.optim.Adam([model.tok_emb.weight], lr=args.tied_embed_lr, betas=(args.beta1, args.beta2),
                         eps=args.adam_eps, fused=True),
        ref.Muon(matrix, lr=args.matrix_lr, momentum=args.muon_momentum, backend_steps=args.muon_backend_steps),
        torch.optim.Adam(scalar, lr=args.scalar_lr, betas=(args.beta1, args.beta2), eps=args.adam_eps, fused=True),
    ]
    n_params = sum(p.numel() for p in model.parameters())
    micro = a.tokens_per_step // a.accum // a.seq
    g = torch.Generator(device=device).manual_seed(0)
    batches = [torch.randint(0, args.vocab_size, (micro, a.seq + 1), device=device, generator=g)
               for _ in range(a.accum)]

    def step() -> float:
        for o in opts:
            o.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        for xy in batches:
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=True):
                loss = run(xy[:, :-1], xy[:, 1:])
            total += loss.detach()
            (loss / a.accum).backward()
        for o in opts:
            o.step()
        return total

    t0 = time.perf_counter()
    for _ in range(a.warmup):
        step()
    torch.cuda.synchronize()
    print(f"warm-up ({a.warmup} steps, compile included): {time.perf_counter() - t0:.1f} s", flush=True)
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(a.steps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        loss = step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        print(f"step {i}: {1000 * times[-1]:.1f} ms, loss {loss.item() / a.accum:.4f}", flush=True)
    if a.profile:
        profile_one_step(torch, step, a.accum)
    times.sort()
    med = times[len(times) // 2]
    tokens = micro * a.seq * a.accum
    print(json.dumps({"peer": "parameter-golf train_gpt.py", "mode": a.mode, "torch": torch.__version__,
                      "device": torch.cuda.get_device_name(0), "params": n_params, "tokens_per_step": tokens,
                      "micro_batch": micro, "accum": a.accum, "ms_per_step": 1000 * med,
                      "ms_best": 1000 * times[0], "tokens_per_s": tokens / med,
                      "peak_gib": torch.cuda.max_memory_allocated() / 2**30}))


if __name__ == "__main__":
    main()
