"""The cost of masking gradients from packed bits, side by side with its alternatives, in one run.

    .venv/bin/python benchmarks/bench_mask_expansion.py            # MiniLM-shaped weights (10.6M)
    .venv/bin/python benchmarks/bench_mask_expansion.py --repeat 20

What the sparse regime adds to a training step is one pass over the masked gradients. This prints, for
fp32 gradients shaped like MiniLM's masked weights at 50 % sparsity:

- bool multiply: ``grad.mul_(keep)`` with a resident bool mask (1 byte per weight), the baseline;
- packed (ours): ``bitops.scale_by_bits_`` from 1 bit per weight (256 x 8 lookup table, chunked workspace);
- clipping: the stock ``clip_grad_norm_`` alone (what a dense step does anyway), masking then clipping
  (what ``SparseTrainer`` does), and a fused variant that computes the masked norm from the bits and folds the
  mask into the clipping multiply (one gradient write instead of two, but the bits are expanded twice).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hf_junkdna.masks import pack_bool
from hf_junkdna.training.bitops import _BITS, Workspace, scale_by_bits_

MINILM_SHAPES = [(1536, 384)] * 6 + [(384, 1536)] * 6 + [(384, 384)] * 24  # 6 blocks: q k v o, up, down


def _chunks(flat: torch.Tensor, bits: torch.Tensor, workspace: Workspace):
    """(gradient chunk viewed (n, 8), index of its packed bytes) over whole bytes."""
    _, index = workspace.get(flat.dtype, flat.device)
    whole = flat.numel() // 8
    for start in range(0, whole, workspace.chunk_bytes):
        stop = min(whole, start + workspace.chunk_bytes)
        count = stop - start
        chunk_index = index[:count]
        chunk_index.copy_(bits[start:stop])
        yield flat[start * 8 : stop * 8].view(count, 8), chunk_index


def fused_masked_clip_(grads, bits_list, max_norm: float, workspace: Workspace) -> torch.Tensor:
    factors, _ = workspace.get(torch.float32, grads[0].device)
    unit = _BITS.to(torch.float32)
    total = torch.zeros((), dtype=torch.float32)
    for grad, bits in zip(grads, bits_list):
        for chunk, index in _chunks(grad.view(-1), bits, workspace):
            masked = factors[: chunk.shape[0]]
            torch.index_select(unit, 0, index, out=masked)
            masked.mul_(chunk)
            total += torch.dot(masked.view(-1), masked.view(-1))
    norm = total.sqrt()
    table = unit * torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for grad, bits in zip(grads, bits_list):
        for chunk, index in _chunks(grad.view(-1), bits, workspace):
            scale = factors[: chunk.shape[0]]
            torch.index_select(table, 0, index, out=scale)
            chunk.mul_(scale)
    return norm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=10, help="timed calls per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in MINILM_SHAPES]
    keeps = [torch.rand(shape) > 0.5 for shape in MINILM_SHAPES]
    bits_list = [pack_bool(keep) for keep in keeps]
    originals = [torch.randn(shape) for shape in MINILM_SHAPES]
    for param, original in zip(params, originals):
        param.grad = original.clone()
    grads = [param.grad for param in params]
    workspace = Workspace()

    def bool_multiply():
        for grad, keep in zip(grads, keeps):
            grad.mul_(keep)

    def packed():
        for grad, bits in zip(grads, bits_list):
            scale_by_bits_(grad, bits, workspace=workspace)

    def clip_only():
        torch.nn.utils.clip_grad_norm_(params, 1.0)

    def mask_then_clip():
        packed()
        torch.nn.utils.clip_grad_norm_(params, 1.0)

    def fused():
        fused_masked_clip_(grads, bits_list, 1.0, workspace)

    # the fused variant must give what masking then clipping gives
    mask_then_clip()
    expected = [grad.clone() for grad in grads]
    for grad, original in zip(grads, originals):
        grad.copy_(original)
    fused()
    worst = max(float((grad - want).abs().max()) for grad, want in zip(grads, expected))
    print(f"{sum(k.numel() for k in keeps) / 1e6:.1f}M fp32 gradients; fused vs mask-then-clip max |diff| {worst:.2e}")

    variants = {
        "bool multiply (1 B/weight)": bool_multiply,
        "packed, ours (1 bit/weight)": packed,
        "clip_grad_norm_ only": clip_only,
        "mask then clip (ours)": mask_then_clip,
        "fused masked clip": fused,
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):  # interleaved, so drifts of a shared machine hit every variant alike
        for name, function in variants.items():
            function()
            start = time.perf_counter()
            for _ in range(args.repeat):
                function()
            times[name].append((time.perf_counter() - start) / args.repeat * 1e3)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"{'variant':<30}{'ms':>8}{'ratio':>8}")
    for name, value in median.items():
        reference = median["bool multiply (1 B/weight)" if "clip" not in name else "mask then clip (ours)"]
        print(f"{name:<30}{value:8.2f}{value / reference:8.2f}")
    print("(ratios: masking variants vs bool multiply; clipping variants vs mask then clip)")


if __name__ == "__main__":
    main()
