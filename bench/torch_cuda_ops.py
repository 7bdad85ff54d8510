#!/usr/bin/env python3
"""PyTorch twin of bench_cuda: the same linear / conv2d / attention shapes in f32 on the GPU (TF32 off unless --tf32),
timed two ways:
  resident  inputs and weights already on the GPU (how a PyTorch model runs);
  offload   inputs copied from (pageable) host memory and the output copied back around the op, weights resident
            (how nextq's cuda backend runs today: activations live in host memory).
Prints `torch op=NAME resident_s=... offload_s=...` (medians of --reps after a warm-up). Needs a CUDA build of torch."""
import argparse
import time

import torch
import torch.nn.functional as F


def med(fn, reps):
    fn()
    torch.cuda.synchronize()
    v = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        v.append(time.perf_counter() - t0)
    v.sort()
    return v[len(v) // 2]


def case(name, host_inputs, op, reps):
    dev = [t.cuda() for t in host_inputs]
    resident = med(lambda: op(*dev), reps)
    offload = med(lambda: op(*[t.cuda() for t in host_inputs]).cpu(), reps)
    print(f"torch op={name} resident_s={resident:.6f} offload_s={offload:.6f}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tf32", action="store_true")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.backends.cudnn.allow_tf32 = a.tf32
    torch.manual_seed(0)
    print(f"torch version={torch.__version__} device=\"{torch.cuda.get_device_name()}\" tf32={int(a.tf32)}")
    for m, n, k in [(1, 4096, 4096), (1, 11008, 4096), (128, 4096, 4096), (128, 11008, 4096)]:
        w = torch.randn(n, k).cuda()
        case(f"linear_bf16_M{m}_N{n}_K{k}", [torch.randn(m, k)], lambda x, w=w: x @ w.t(), a.reps)
    for nb, ci, co, h, ks in [(2, 320, 320, 64, 3), (2, 640, 640, 32, 3), (2, 1280, 1280, 8, 3), (2, 320, 320, 64, 1)]:
        w, b = torch.randn(co, ci, ks, ks).cuda(), torch.randn(co).cuda()
        case(f"conv2d_bf16_N{nb}_{ci}to{co}_{h}x{h}_k{ks}", [torch.randn(nb, ci, h, h)],
             lambda x, w=w, b=b, p=ks // 2: F.conv2d(x, w, b, padding=p), a.reps)
    for t, s, hh, hd, causal in [(4096, 4096, 8, 40, False), (128, 128, 32, 128, True), (512, 512, 32, 128, True)]:
        def attn(q, k, v, hh=hh, hd=hd, causal=causal):
            q, k, v = (x.view(-1, hh, hd).transpose(0, 1) for x in (q, k, v))
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(0, 1).reshape(-1, hh * hd)
        case(f"attention_T{t}_S{s}_H{hh}_hd{hd}{'_causal' if causal else ''}",
             [torch.randn(t, hh * hd), torch.randn(s, hh * hd), torch.randn(s, hh * hd)], attn, a.reps)


if __name__ == "__main__":
    main()
