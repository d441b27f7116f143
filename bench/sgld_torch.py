#!/usr/bin/env python3
"""Time SGLD on a Tracr model in PyTorch, the loop llc estimate runs.

Usage:
    python3 bench/sgld_torch.py MODEL.llcw --threads T --chains C [--seconds S]
    python3 bench/sgld_torch.py MODEL.llcw --outputs TOKEN...

The model is read from llc's weight format (llc.h) and run as llc runs it.
Token and position embeddings come first. Each layer then adds attention
(scores q.k / sqrt(d_head), softmax) and a ReLU MLP to the residual, and
the unembedding comes last. The data are 1024 random full-length inputs labelled
with the model's own outputs at w*. The loss is the cross-entropy against
the argmax labels (mean squared error for a numerical output), averaged
over the non-BOS positions of a batch of 32. Each step is the update of
`llc estimate` and of devinterp's SGLD, tensor by tensor:

    w <- w - (lr/2) (nbeta grad + localization (w - w*)) + sqrt(lr) N(0, 1)

with lr 1e-5, nbeta = 32 / ln 32 and localization 0, llc's defaults.

Prints one line of JSON: steps per second over all chains, the chains run
one after another with torch.set_num_threads(T). Timing starts after five
warm-up steps per chain. --outputs prints the output-space values of one
input instead, which bench/bench.py compares with `llc run --raw`.
"""

import argparse
import json
import math
import struct
import sys
import time

import torch

BATCH = 32
SAMPLES = 1024
LR = 1e-5
LOCALIZATION = 0.0
WARMUP_STEPS = 5


def read_llcw(path):
    """Return (config dict, {tensor name: (tensor, trainable)}) of an .llcw file."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"LLCW":
        raise SystemExit(f"{path}: not an LLCW weight file")
    pos = 4

    def u32():
        nonlocal pos
        value = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        return value

    def u64():
        nonlocal pos
        value = struct.unpack_from("<Q", data, pos)[0]
        pos += 8
        return value

    def string():
        nonlocal pos
        n = u32()
        text = data[pos:pos + n].decode("utf-8")
        pos += n
        return text

    version = u32()
    flags = u32()
    keys = ("n_layers", "n_heads", "d_model", "d_head", "d_mlp", "max_seq_len",
            "n_vocab", "bos_id", "pad_id", "output_kind", "n_outputs")
    cfg = {key: u32() for key in keys}
    cfg["causal"] = bool(flags & 1)
    n_output_dims, n_labels, n_meta, n_tensors = u32(), u32(), u32(), u32()
    cfg["vocab"] = [string() for _ in range(cfg["n_vocab"])]
    cfg["output_values"] = [string() for _ in range(cfg["n_outputs"])]
    pos += 4 * n_output_dims
    for _ in range(n_labels + 2 * n_meta):
        string()

    tensors = {}
    for _ in range(n_tensors):
        name = string()
        shape = [u32() for _ in range(u32())]
        trainable = u32() == 1
        sparse = version == 2 and u32() == 1
        offset, _n_bytes = u64(), u64()
        numel = math.prod(shape)
        if sparse:
            nnz = struct.unpack_from("<I", data, offset)[0]
            index = struct.unpack_from(f"<{nnz}I", data, offset + 4)
            values = struct.unpack_from(f"<{nnz}f", data, offset + 4 + 4 * nnz)
            flat = torch.zeros(numel)
            flat[list(index)] = torch.tensor(values)
        else:
            flat = torch.tensor(struct.unpack_from(f"<{numel}f", data, offset))
        tensors[name] = (flat.reshape(shape), trainable)
    return cfg, tensors


class TracrModel:
    """The forward pass of llc.h, on named tensors."""

    def __init__(self, cfg, weights):
        self.cfg = cfg
        self.w = weights

    def forward(self, ids):
        c, w = self.cfg, self.w
        n_seqs, T = ids.shape
        H, dh = c["n_heads"], c["d_head"]
        x = w["token_embed/embeddings"][ids] + w["pos_embed/embeddings"][:T]
        mask = torch.ones(T, T).triu(1).bool() if c["causal"] else None
        for layer in range(c["n_layers"]):
            p = f"transformer/layer_{layer}/"
            q = (x @ w[p + "attn/query/w"] + w[p + "attn/query/b"]).view(n_seqs, T, H, dh).transpose(1, 2)
            k = (x @ w[p + "attn/key/w"] + w[p + "attn/key/b"]).view(n_seqs, T, H, dh).transpose(1, 2)
            v = (x @ w[p + "attn/value/w"] + w[p + "attn/value/b"]).view(n_seqs, T, H, dh).transpose(1, 2)
            scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
            if mask is not None:
                scores = scores.masked_fill(mask, float("-inf"))
            z = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n_seqs, T, H * dh)
            x = x + z @ w[p + "attn/linear/w"] + w[p + "attn/linear/b"]
            hidden = torch.relu(x @ w[p + "mlp/linear_1/w"] + w[p + "mlp/linear_1/b"])
            x = x + hidden @ w[p + "mlp/linear_2/w"] + w[p + "mlp/linear_2/b"]
        return x @ w["unembed/w"] + w["unembed/b"]


def random_inputs(cfg, n, generator):
    """n full-length inputs: BOS, then tokens drawn from the vocab without BOS and PAD."""
    tokens = torch.tensor([i for i in range(cfg["n_vocab"]) if i not in (cfg["bos_id"], cfg["pad_id"])])
    body = tokens[torch.randint(len(tokens), (n, cfg["max_seq_len"]), generator=generator)]
    bos = torch.full((n, 1), cfg["bos_id"], dtype=torch.long)
    return torch.cat([bos, body], dim=1)


def loss_fn(cfg, y, target):
    """Mean loss over the non-BOS positions: cross-entropy, or squared error for a numerical output."""
    y = y[:, 1:]
    if cfg["output_kind"] == 0:
        return torch.nn.functional.cross_entropy(y.reshape(-1, y.shape[-1]), target[:, 1:].reshape(-1))
    return ((y - target[:, 1:]) ** 2).mean()


def time_sgld(path, threads, chains, seconds):
    torch.set_num_threads(threads)
    cfg, tensors = read_llcw(path)
    w_star = {name: t for name, (t, _) in tensors.items()}
    trainable = [name for name, (_, train) in tensors.items() if train]
    generator = torch.Generator().manual_seed(1)

    inputs = random_inputs(cfg, SAMPLES, generator)
    with torch.no_grad():
        y = TracrModel(cfg, w_star).forward(inputs)
    targets = y.argmax(-1) if cfg["output_kind"] == 0 else y
    nbeta = BATCH / math.log(BATCH)

    steps = 0
    elapsed = 0.0
    for _ in range(chains):
        weights = dict(w_star)
        params = {name: w_star[name].clone().requires_grad_(True) for name in trainable}
        weights.update(params)
        model = TracrModel(cfg, weights)
        order = torch.randperm(SAMPLES, generator=generator)
        chain_steps = 0
        start = None
        while True:
            if chain_steps == WARMUP_STEPS:
                start = time.perf_counter()
            b = (chain_steps * BATCH) % SAMPLES
            if b == 0:
                order = torch.randperm(SAMPLES, generator=generator)
            batch = order[b:b + BATCH]
            loss = loss_fn(cfg, model.forward(inputs[batch]), targets[batch])
            for p in params.values():
                p.grad = None
            loss.backward()
            loss.item()   # llc records the loss of every step
            with torch.no_grad():
                for name, p in params.items():
                    drift = nbeta * p.grad + LOCALIZATION * (p - w_star[name])
                    p.add_(drift, alpha=-LR / 2)
                    p.add_(torch.randn_like(p), alpha=math.sqrt(LR))
            chain_steps += 1
            if start is not None and chain_steps >= WARMUP_STEPS + 10 \
                    and time.perf_counter() - start >= seconds / chains:
                break
        elapsed += time.perf_counter() - start
        steps += chain_steps - WARMUP_STEPS
    return {"steps": steps, "seconds": elapsed, "steps_per_second": steps / elapsed,
            "threads": threads, "chains": chains, "torch": torch.__version__}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--chains", type=int, default=1, help="chains, run one after another (default 1)")
    parser.add_argument("--seconds", type=float, default=2.0, help="time measured over all chains (default 2)")
    parser.add_argument("--outputs", nargs="+", metavar="TOKEN",
                        help="print the output-space values of this input instead of timing")
    args = parser.parse_args()
    if args.outputs:
        cfg, tensors = read_llcw(args.model)
        ids = torch.tensor([[cfg["bos_id"]] + [cfg["vocab"].index(t) for t in args.outputs]])
        with torch.no_grad():
            y = TracrModel(cfg, {name: t for name, (t, _) in tensors.items()}).forward(ids)
        print(json.dumps(y[0].tolist()))
        return 0
    print(json.dumps(time_sgld(args.model, args.threads, args.chains, args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
