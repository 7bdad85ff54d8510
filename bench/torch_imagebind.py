#!/usr/bin/env python3
"""PyTorch twin of bench_imagebind's model: the ImageBind-huge vision trunk shape (width 1280, 16 heads, MLP 5120,
257 tokens, pre-norm blocks with nn.MultiheadAttention and exact GELU, Conv3d (2,14,14) stem on a 2-frame clip, head
LayerNorm + CLS + Linear 1280->1024, L2 normalise) with random f32 weights, --blocks of the 32 blocks, batch --batch,
torch.set_num_threads(--threads), inference mode. Prints the median seconds per forward as `seconds=`.
Debian's python3-torch (1.13) is enough; it is not in deploy/install-deps.sh (~1 GB)."""
import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, e, heads, ff):
        super().__init__()
        self.norm_1 = nn.LayerNorm(e, eps=1e-6)
        self.attn = nn.MultiheadAttention(e, heads, bias=True, batch_first=True)
        self.norm_2 = nn.LayerNorm(e, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(e, ff), nn.Linear(ff, e)

    def forward(self, x):
        h = self.norm_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(F.gelu(self.fc1(self.norm_2(x))))


class Trunk(nn.Module):
    def __init__(self, blocks, e=1280, heads=16, ff=5120, out=1024):
        super().__init__()
        self.stem = nn.Conv3d(3, e, kernel_size=(2, 14, 14), stride=(2, 14, 14), bias=False)
        self.cls = nn.Parameter(torch.randn(1, 1, e) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 257, e) * 0.02)
        self.pre = nn.LayerNorm(e, eps=1e-6)
        self.blocks = nn.ModuleList(Block(e, heads, ff) for _ in range(blocks))
        self.head_norm = nn.LayerNorm(e, eps=1e-6)
        self.head = nn.Linear(e, out, bias=False)

    def forward(self, img):
        x = img.unsqueeze(2).repeat(1, 1, 2, 1, 1)            # PadIm2Video
        x = self.stem(x).flatten(2).transpose(1, 2)            # [B, 256, E]
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        x = self.pre(x)
        for b in self.blocks:
            x = b(x)
        return F.normalize(self.head(self.head_norm(x)[:, 0]), dim=-1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    m = Trunk(a.blocks).eval()
    x = torch.randn(a.batch, 3, 224, 224)
    ts = []
    with torch.inference_mode():
        m(x)  # warm-up
        for _ in range(a.reps):
            t = time.perf_counter()
            m(x)
            ts.append(time.perf_counter() - t)
    ts.sort()
    med = ts[len(ts) // 2]
    print(f"torch {torch.__version__} imagebind vision {a.blocks} blocks batch {a.batch} f32, "
          f"{torch.get_num_threads()} threads: seconds={med:.4f} (median of {a.reps})")


if __name__ == "__main__":
    main()
