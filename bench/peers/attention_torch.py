"""PyTorch's fused causal attention (scaled_dot_product_attention, flash backend, bf16, GQA)
at the shape of bench/bench_cuda_attention.cu, timed the same way (median of CUDA-event
timings after warm-up; backward timed alone from a saved graph). The peer figure for our
tensor-core kernels.

  python3 bench/peers/attention_torch.py [--batch 16 --heads 8 --kv-heads 4 --seq 1024 --head-dim 64]
"""
import argparse
import json

import torch
import torch.nn.functional as F


def median_ms(fn, reps=20):
    for _ in range(3):
        fn()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ts = []
    for _ in range(reps):
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    for n, d in [("batch", 16), ("heads", 8), ("kv-heads", 4), ("seq", 1024), ("head-dim", 64)]:
        ap.add_argument("--" + n, type=int, default=d)
    a = ap.parse_args()
    B, Hq, Hkv, T, D = a.batch, a.heads, a.kv_heads, a.seq, a.head_dim
    dev = torch.device("cuda")
    q = torch.randn(B, Hq, T, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, Hkv, T, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(B, Hkv, T, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    do = torch.randn(B, Hq, T, D, device=dev, dtype=torch.bfloat16)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        fwd_ms = median_ms(fwd)

        def bwd():
            out = fwd()
            torch.autograd.grad(out, (q, k, v), do)

        both_ms = median_ms(bwd)
    flops = 4.0 * B * Hq * T * T * D / 2
    bwd_ms = both_ms - fwd_ms
    print(f"torch {torch.__version__} SDPA flash bf16: fwd {fwd_ms:.3f} ms ({flops / fwd_ms / 1e9:.1f} TFLOP/s), "
          f"bwd {bwd_ms:.3f} ms ({2.5 * flops / bwd_ms / 1e9:.1f} TFLOP/s)")
    print(json.dumps({"peer": "torch sdpa flash", "torch": torch.__version__, "B": B, "Hq": Hq, "Hkv": Hkv,
                      "T": T, "D": D, "fwd_ms": fwd_ms, "bwd_ms": bwd_ms}))


if __name__ == "__main__":
    main()
