"""The ``junkdna`` command: prune a model from the shell, and inspect masks and pruned checkpoints.

    junkdna prune packaged:smollm2-135m out/smollm2-wanda-50 --method wanda --sparsity 0.5
    junkdna prune bert-base-uncased out/bert-2of4 --task sequence-classification --pattern 2:4
    junkdna inspect out/smollm2-wanda-50            # a pruned folder, a Hub repo id or a mask file

Sweeps and fine-tuning live in the recipes (``accelerate launch recipes/triviaqa.py``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

TASKS = {
    "causal-lm": "AutoModelForCausalLM",
    "sequence-classification": "AutoModelForSequenceClassification",
    "masked-lm": "AutoModelForMaskedLM",
    "seq2seq-lm": "AutoModelForSeq2SeqLM",
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="junkdna", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    prune = commands.add_parser("prune", help="prune a model once and save it with its masks and a model card")
    prune.add_argument("model", help="Hub id, local folder, or an offline alias such as packaged:smollm2-135m")
    prune.add_argument("output_dir", help="folder to write (created; must be new, empty, or written by junkdna)")
    prune.add_argument("--method", default="magnitude", help="magnitude, wanda or sparsegpt (default: magnitude)")
    prune.add_argument("--sparsity", type=float, default=None, help="fraction of prunable weights to zero")
    prune.add_argument("--pattern", default="unstructured", help="'unstructured' or N:M such as 2:4")
    prune.add_argument("--scope", default=None, help="'global' or 'layer' (default: the method's own)")
    prune.add_argument("--ignore", action="append", default=None, help="regex of parameter names to keep dense")
    prune.add_argument("--task", choices=sorted(TASKS), default="causal-lm", help="model head to load")
    prune.add_argument("--calibration-file", default=None, help="plain text for wanda/sparsegpt calibration")
    prune.add_argument("--num-calibration-samples", type=int, default=32, help="calibration sequences")
    prune.add_argument("--calibration-seq-len", type=int, default=128, help="tokens per calibration sequence")
    prune.add_argument("--compressed", action="store_true", help="also store weights in the sparse-bitmask format")
    prune.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="push the folder to this Hub repo")

    inspect = commands.add_parser("inspect", help="print the sparsity of a mask file or pruned checkpoint")
    inspect.add_argument("path", help="mask .safetensors file, pruned folder, or Hub repo id")
    inspect.add_argument("--json", action="store_true", help="print machine-readable statistics")
    return parser


def _calibration_texts(path: str | None) -> list[str]:
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
        return [paragraph for paragraph in text.split("\n\n") if paragraph.strip()] or [text]
    # Offline default: the evidence passages of the TriviaQA-schema sample shipped with the package.
    from .experiments.qa import load_triviaqa_sample

    return [record["evidence"] for record in load_triviaqa_sample() if record.get("evidence")]


def _calibration_batches(tokenizer, texts: list[str], count: int, seq_len: int):
    import torch

    ids = tokenizer("\n\n".join(texts), return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    available = ids.numel() // seq_len
    if available == 0:
        raise ValueError(
            f"--calibration-file: the text has {ids.numel()} tokens, fewer than one sequence of {seq_len}"
        )
    rows = ids[: min(count, available) * seq_len].view(-1, seq_len)
    return [row.unsqueeze(0) for row in torch.unbind(rows)]


def _prune(args: argparse.Namespace) -> int:
    import transformers

    from . import SparsityConfig, prune
    from .hub import push_pruned_to_hub, save_pruned
    from .hub.layout import is_pruned_folder
    from .offline import resolve_model_path

    config = SparsityConfig(
        method=args.method,
        sparsity=args.sparsity,
        pattern=args.pattern,
        scope=args.scope,
        ignore=args.ignore,
        num_calibration_samples=args.num_calibration_samples,
    )  # validated before anything is loaded
    output = Path(args.output_dir)
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not is_pruned_folder(output))):
        raise FileExistsError(
            f"output_dir {str(output)!r} exists and was not written by junkdna; choose a new or empty folder"
        )
    source = resolve_model_path(args.model)
    model = getattr(transformers, TASKS[args.task]).from_pretrained(source).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    calibration = None
    if config.needs_calibration:
        texts = _calibration_texts(args.calibration_file)
        calibration = _calibration_batches(tokenizer, texts, args.num_calibration_samples, args.calibration_seq_len)
    masks = prune(model, config, calibration_data=calibration)
    command = "junkdna " + " ".join(shlex.quote(part) for part in sys.argv[1:]) if sys.argv[1:] else None
    folder = save_pruned(
        model,
        args.output_dir,
        masks,
        tokenizer=tokenizer,
        regime="sparse",
        compressed=args.compressed,
        base_model=args.model if not args.model.startswith("packaged:") else None,
        command=command,
    )
    print(
        f"pruned {masks.num_zeros():,} of {masks.num_weights():,} weights (sparsity {masks.sparsity():.4f}) -> {folder}"
    )
    if args.push_to_hub:
        push_pruned_to_hub(
            model,
            args.push_to_hub,
            masks,
            tokenizer=tokenizer,
            regime="sparse",
            compressed=args.compressed,
            command=command,
        )
        print(f"pushed to {args.push_to_hub}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .masks import MaskSet

    path = Path(args.path)
    if path.is_file():
        masks = MaskSet.load(path)
    else:
        from .hub.layout import MASKS_NAME
        from .hub.load import resolve_folder

        # from the Hub: the mask file alone (a 7B repo's weights are ~14 GB that inspect never reads)
        folder = path if path.is_dir() else resolve_folder(args.path, allow_patterns=[MASKS_NAME])[0]
        if not (Path(folder) / MASKS_NAME).is_file():
            raise FileNotFoundError(f"{args.path!r} has no {MASKS_NAME}: it was not saved by hf_junkdna")
        masks = MaskSet.load(Path(folder) / MASKS_NAME)
    statistics = masks.statistics()
    if args.json:
        print(json.dumps({**statistics, "metadata": masks.metadata}, indent=2, default=str))
        return 0
    width = max(len(name) for name in masks) if len(masks) else 10
    print(f"{'parameter':<{width}}  {'shape':>14}  {'sparsity':>8}")
    for name, row in statistics["per_layer"].items():
        print(f"{name:<{width}}  {'x'.join(map(str, row['shape'])):>14}  {row['sparsity']:>8.4f}")
    print(f"{'overall':<{width}}  {statistics['num_weights']:>14,}  {statistics['sparsity']:>8.4f}")
    config = masks.metadata.get("sparsity_config")
    if config:
        print("config:", json.dumps(config))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    from .hub.errors import HubPushError  # after parsing: --help stays fast

    try:
        return {"prune": _prune, "inspect": _inspect}[args.command](args)
    except (ValueError, FileNotFoundError, FileExistsError, LookupError, HubPushError) as error:
        print(f"junkdna {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
