#!/usr/bin/env python3
"""PyTorch twin of bench_llama_tiny: a LLaMA of stories260K's shape (dim 64, hidden 172, 5 layers, 8 heads, 4 KV
heads, head_dim 8, vocab 512, RMSNorm 1e-5, interleaved RoPE theta 10000, SwiGLU) with random f32 weights,
torch.set_num_threads(--threads), inference mode:
  prefill  one forward over --seq tokens (causal, logits for every token);
  decode   --seq single-token forwards with a KV cache (logits of the new token).
Prints `prefill seconds=` then `decode seconds=` (medians of --reps). Debian's python3-torch 1.13 is enough; it is not
in deploy/install-deps.sh (~1 GB)."""
import argparse
import time

import torch
import torch.nn.functional as F

DIM, HID, LAYERS, HEADS, KVH, VOCAB = 64, 172, 5, 8, 4, 512
HD = DIM // HEADS


def rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w


def rope(x, cos, sin):  # x [T, H, hd], interleaved pairs (2i, 2i+1)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1).flatten(-2)


class Llama:
    def __init__(self, max_ctx):
        g = torch.Generator().manual_seed(0)
        u = lambda *s: (torch.rand(*s, generator=g) * 2 - 1) / s[-1] ** 0.5
        self.emb = u(VOCAB, DIM)
        self.L = [dict(an=torch.ones(DIM), fn=torch.ones(DIM), wq=u(HEADS * HD, DIM), wk=u(KVH * HD, DIM),
                       wv=u(KVH * HD, DIM), wo=u(DIM, HEADS * HD), w1=u(HID, DIM), w2=u(DIM, HID), w3=u(HID, DIM))
                  for _ in range(LAYERS)]
        self.norm, self.head = torch.ones(DIM), self.emb
        freqs = 1.0 / (10000.0 ** (torch.arange(0, HD, 2).float() / HD))
        ang = torch.outer(torch.arange(max_ctx).float(), freqs)
        self.cos, self.sin = ang.cos()[:, None, :], ang.sin()[:, None, :]
        self.max_ctx = max_ctx
        self.reset()

    def reset(self):
        self.k = [torch.zeros(self.max_ctx, KVH, HD) for _ in range(LAYERS)]
        self.v = [torch.zeros(self.max_ctx, KVH, HD) for _ in range(LAYERS)]
        self.pos = 0

    def forward(self, tok):  # tok [T] -> logits [T, vocab]
        T, p0 = tok.shape[0], self.pos
        x = self.emb[tok]
        cos, sin = self.cos[p0:p0 + T], self.sin[p0:p0 + T]
        for i, l in enumerate(self.L):
            h = rms(x, l["an"])
            q = rope(F.linear(h, l["wq"]).view(T, HEADS, HD), cos, sin)
            k = rope(F.linear(h, l["wk"]).view(T, KVH, HD), cos, sin)
            self.k[i][p0:p0 + T], self.v[i][p0:p0 + T] = k, F.linear(h, l["wv"]).view(T, KVH, HD)
            K = self.k[i][:p0 + T].repeat_interleave(HEADS // KVH, 1).transpose(0, 1)
            V = self.v[i][:p0 + T].repeat_interleave(HEADS // KVH, 1).transpose(0, 1)
            att = q.transpose(0, 1) @ K.transpose(1, 2) / HD ** 0.5  # [H, T, p0+T]
            if T > 1:
                mask = torch.ones(T, p0 + T, dtype=torch.bool).tril(p0)
                att = att.masked_fill(~mask, float("-inf"))
            o = (att.softmax(-1) @ V).transpose(0, 1).reshape(T, DIM)
            x = x + F.linear(o, l["wo"])
            h = rms(x, l["fn"])
            x = x + F.linear(F.silu(F.linear(h, l["w1"])) * F.linear(h, l["w3"]), l["w2"])
        self.pos += T
        return F.linear(rms(x, self.norm), self.head)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    m = Llama(a.seq)
    tok = torch.tensor([(i * 37 + 11) % VOCAB for i in range(a.seq)])
    tp, td = [], []
    with torch.inference_mode():
        for r in range(a.reps + 1):  # r = 0: warm-up
            m.reset()
            t = time.perf_counter()
            m.forward(tok)
            t1 = time.perf_counter()
            m.reset()
            for i in range(a.seq):
                m.forward(tok[i:i + 1])
            t2 = time.perf_counter()
            if r:
                tp.append(t1 - t), td.append(t2 - t1)
    med = lambda v: sorted(v)[len(v) // 2]
    print(f"torch {torch.__version__} tiny llama, {torch.get_num_threads()} threads: prefill {a.seq} tokens "
          f"seconds={med(tp):.5f}")
    print(f"torch {torch.__version__} tiny llama: decode {a.seq} tokens seconds={med(td):.5f} (medians of {a.reps})")


if __name__ == "__main__":
    main()
