#!/usr/bin/env python
"""Open- vs closed-book TriviaQA under pruning: how much sparsity does each difficulty setting tolerate?

The study's Setting 3. A pretrained causal LM is pruned at a series of sparsities (magnitude, Wanda,
SparseGPT) and answers TriviaQA questions with the evidence passage (open-book, easier) and without it
(closed-book, harder). Each score is normalised by the dense model's in the same setting, and the sparsity
tolerance is the largest sparsity whose normalised exact match stays >= 0.99.

Offline default (packaged SmolLM2-135M-Instruct, the shipped TriviaQA-schema sample, CPU):

    accelerate launch recipes/triviaqa.py

`accelerate launch` without a config runs one CPU process with OMP_NUM_THREADS=1. On a dedicated machine
`--num_cpu_threads_per_process 2` is faster; on a shared one keep one thread (measured on a loaded 2-core
machine: 32 closed-book answers took 3.6 CPU-s with one thread and 14-36 CPU-s with two).

Two processes on CPU (questions split between them, results gathered on the main process). `--cpu` with
`--num_processes 2` silently runs ONE process; the multi-process launcher does run two, over gloo:

    accelerate launch --multi_gpu --num_processes 2 --main_process_port 29517 recipes/triviaqa.py

The paper's setup (network and GPUs; TriviaQA "rc" validation questions, evidence from the Wikipedia pages):

    accelerate launch --multi_gpu --num_processes 8 recipes/triviaqa.py \\
        --config recipes/configs/triviaqa_vicuna7b.yaml

which is `--model_name_or_path lmsys/vicuna-7b-v1.5 --dataset_name mandarjoshi/trivia_qa
--dataset_config_name rc` plus the options in that file. Outputs in --output_dir: all_results.json,
results.md (the table printed at the end), triviaqa_normalized.png, and the resumable results store
(sweep.json, cells.jsonl, predictions/): a killed run started again recomputes only unfinished cells.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from hf_junkdna.experiments.args import parse_args
from hf_junkdna.experiments.difficulty import CLOSED_BOOK, OPEN_BOOK, OpenClosedBook, with_levels
from hf_junkdna.experiments.plots import plot_normalized_curves
from hf_junkdna.experiments.qa import (
    build_prompt,
    extract_answer,
    generate_answers,
    load_triviaqa_sample,
    record_from_triviaqa,
    score_predictions,
    validate_qa_records,
)
from hf_junkdna.experiments.report import format_table, summarize, write_report
from hf_junkdna.experiments.store import CellKey, ResultsStore, atomic_write_text, to_json
from hf_junkdna.experiments.sweep import WANDA_STATISTICS, SweepRunner, plan_cells
from hf_junkdna.offline import SMOLLM2_ALIAS, resolve_model_path

logger = logging.getLogger("triviaqa")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}
FIGURE = "triviaqa_normalized.png"


# ------------------------------------------------------------------------------------------------ arguments
@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=SMOLLM2_ALIAS,
        metadata={
            "help": f"Hub id or local folder of a causal LM; {SMOLLM2_ALIAS!r} is the packaged SmolLM2-135M-Instruct."
        },
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's own."})
    revision: str = field(default="main", metadata={"help": "Model revision (branch, tag or commit) on the Hub."})
    torch_dtype: str = field(
        default="float32",
        metadata={"help": "Weights dtype for pruning and evaluation.", "choices": list(DTYPES)},
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom modelling code from the Hub."})


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "None: the TriviaQA-schema sample shipped with hf_junkdna. A Hub dataset (mandarjoshi/trivia_qa, "
            "read streaming) or a local .json/.jsonl file with question, answer {value, aliases}, evidence, and "
            "a 'split' column that --eval_split/--train_split select rows by. A local file without a 'split' column "
            "is split in file order: its first --num_questions rows are evaluated, the rows after them are the "
            "train rows (few-shot examples, calibration text, --do_train data), so no evaluated question (or its "
            "answer) is ever shown to the model; --eval_split/--train_split must then keep their defaults."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset config, e.g. 'rc'."})
    eval_split: str = field(default="validation", metadata={"help": "Split with the evaluation questions."})
    train_split: str = field(
        default="train", metadata={"help": "Split for calibration text, few-shot examples and --do_train."}
    )
    num_questions: int = field(
        default=24,
        metadata={
            "help": "Evaluation questions (the first N of the split; 24 keeps the default run within ~5 min of one CPU core)."
        },
    )
    num_calibration_samples: int = field(
        default=16, metadata={"help": "Calibration sequences for Wanda/SparseGPT, packed from the train split."}
    )
    calibration_max_length: int = field(default=128, metadata={"help": "Tokens per calibration sequence."})
    max_evidence_chars: int = field(
        default=1200, metadata={"help": "Evidence window cut from TriviaQA rc documents around the answer."}
    )


@dataclass
class PromptArguments:
    few_shot: int = field(default=0, metadata={"help": "Worked examples from the train split before each question."})
    closed_book_template: str | None = field(
        default=None, metadata={"help": "User turn for closed-book questions, with {question} (default: qa.py's)."}
    )
    open_book_template: str | None = field(
        default=None, metadata={"help": "User turn for open-book questions, with {evidence} and {question}."}
    )
    use_chat_template: str = field(
        default="no",
        metadata={
            "help": "Wrap prompts in the model's chat template: auto (when it has one), yes, or no (default: plain "
            "'Question: ... Answer:' prompts; inside its chat template the packaged 135M model answers in full "
            "sentences, which exact match counts as wrong).",
            "choices": ["auto", "yes", "no"],
        },
    )
    system_prompt: str | None = field(default=None, metadata={"help": "Optional system message."})
    max_new_tokens: int = field(default=8, metadata={"help": "Greedy decoding budget per answer."})
    batch_size: int = field(default=24, metadata={"help": "Questions per generation batch (per process)."})


@dataclass
class SweepArguments:
    methods: list[str] = field(
        default_factory=lambda: ["magnitude", "wanda", "sparsegpt"],
        metadata={"help": "Pruning methods to sweep (magnitude, wanda, sparsegpt)."},
    )
    sparsities: list[float] = field(
        default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
        metadata={"help": "Unstructured sparsities in [0, 1); 0 is the dense reference."},
    )
    patterns: list[str] = field(
        default_factory=lambda: ["unstructured"],
        metadata={"help": "'unstructured' and/or N:M patterns such as 2:4 (N:M fixes the sparsity at 1 - N/M)."},
    )
    settings: list[str] = field(
        default_factory=lambda: [OPEN_BOOK, CLOSED_BOOK], metadata={"help": "Difficulty settings, easier first."}
    )
    scope: str | None = field(
        default=None, metadata={"help": "Selection scope: global or layer (default: each method's own)."}
    )
    wanda_statistics: str = field(
        default="dense",
        metadata={
            "help": "dense: Wanda's input norms from one pass over the dense model, one ranking for all levels "
            "(masks nest); sequential: re-prune per level, each block calibrated on the pruned ones before it.",
            "choices": list(WANDA_STATISTICS),
        },
    )
    metric: str = field(
        default="exact_match", metadata={"help": "Metric for tolerance and the figure: exact_match or f1."}
    )
    threshold: float = field(
        default=0.99, metadata={"help": "Tolerance threshold on the normalised score (0.99 = 99%%)."}
    )
    output_dir: str = field(default="outputs/triviaqa", metadata={"help": "Results, table, figure, resumable store."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Discard results of a different configuration found in output_dir."}
    )
    seed: int = field(default=42, metadata={"help": "Seed for anything random (greedy decoding is deterministic)."})
    cpu_threads: int = field(
        default=0,
        metadata={
            "help": "torch threads per process on CPU; 0 keeps what the launcher set (accelerate launch: "
            "OMP_NUM_THREADS=1 unless --num_cpu_threads_per_process N)."
        },
    )


@dataclass
class TrainHubArguments:
    do_train: bool = field(
        default=False, metadata={"help": "Fine-tune each pruned model with SparseTrainer on the train split first."}
    )
    regime: str = field(
        default="sparse", metadata={"help": "Fine-tuning regime: dense, sparse, freeze, sparse_to_dense."}
    )
    learning_rate: float = field(default=2e-5, metadata={"help": "Fine-tuning learning rate."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Fine-tuning epochs."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Fine-tuning batch size per process."})
    max_train_samples: int = field(
        default=1000,
        metadata={
            "help": "Train-split records read for --do_train (default 1000: a Hub train split is streamed, and "
            "TriviaQA rc's holds ~138k questions with their documents, so it is never read whole)."
        },
    )
    push_to_hub: bool = field(
        default=False, metadata={"help": "Push the pruned checkpoints (+ masks, card with tolerance) to the Hub."}
    )
    hub_model_id: str | None = field(
        default=None,
        metadata={
            "help": "Repo id prefix for --push_to_hub; '-{method}-{pattern}-s{percent}' is appended per checkpoint."
        },
    )
    push_sparsity: float | None = field(
        default=None, metadata={"help": "Sparsity of the pushed checkpoints (default: the highest level swept)."}
    )
    hub_private_repo: bool | None = field(default=None, metadata={"help": "Create the Hub repos as private."})


ARGUMENT_TYPES = (ModelArguments, DataArguments, PromptArguments, SweepArguments, TrainHubArguments)


def check_arguments(model_args, data_args, prompt_args, sweep_args, train_args) -> None:
    """Everything that can be checked before loading anything; raises ValueError naming the option."""
    for name, value, low in (
        ("num_questions", data_args.num_questions, 1),
        ("num_calibration_samples", data_args.num_calibration_samples, 1),
        ("calibration_max_length", data_args.calibration_max_length, 8),
        ("batch_size", prompt_args.batch_size, 1),
        ("max_new_tokens", prompt_args.max_new_tokens, 1),
        ("few_shot", prompt_args.few_shot, 0),
        ("max_train_samples", train_args.max_train_samples, 1),
    ):
        if value < low:
            raise ValueError(f"--{name}={value}: must be >= {low}")
    if sweep_args.metric not in ("exact_match", "f1"):
        raise ValueError(f"--metric={sweep_args.metric!r}: choose exact_match or f1")
    if not 0 < sweep_args.threshold:
        raise ValueError(f"--threshold={sweep_args.threshold}: must be positive")
    OpenClosedBook().select(sweep_args.settings)  # unknown settings raise, naming the valid ones
    needs_train = prompt_args.few_shot > 0 or train_args.do_train or any(m != "magnitude" for m in sweep_args.methods)
    if needs_train and data_args.eval_split == data_args.train_split:
        raise ValueError(
            f"--eval_split and --train_split are both {data_args.eval_split!r}: the few-shot examples, calibration "
            "text or --do_train data would come from the evaluated questions (with their answers); use two splits"
        )
    if train_args.do_train:
        _training_api()
        if train_args.regime == "freeze":
            bad = [
                m
                for m in sweep_args.methods
                if m == "sparsegpt" or (m == "wanda" and sweep_args.wanda_statistics != "dense")
            ]
            if bad:
                raise ValueError(
                    f"--regime freeze keeps every weight and freezes the lowest-ranked ones, but {bad[0]} writes the "
                    "weights while pruning; use --methods magnitude (or wanda with --wanda_statistics dense)"
                )
    if train_args.push_to_hub:
        _hub_api()
        if not train_args.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id (the repo id prefix of the pushed checkpoints)")


def _training_api():
    try:
        from hf_junkdna.training import SparseTrainer, SparseTrainingArguments
    except ImportError as error:
        raise ValueError(
            f"--do_train needs hf_junkdna.training.SparseTrainer and SparseTrainingArguments, which this installation "
            f"does not provide ({error})"
        ) from error
    return SparseTrainer, SparseTrainingArguments


def _hub_api():
    try:
        from hf_junkdna.hub import push_pruned_to_hub
    except ImportError as error:
        raise ValueError(
            f"--push_to_hub needs hf_junkdna.hub.push_pruned_to_hub, which this installation does not provide ({error})"
        ) from error
    return push_pruned_to_hub


# ------------------------------------------------------------------------------------------------ data
def load_records(
    data_args: DataArguments, split: str, limit: int | None, require_evidence: bool = False
) -> list[dict]:
    """Records in the sample's schema (question, answer {value, aliases}, evidence) from the configured source.

    A Hub dataset is streamed (TriviaQA rc is tens of GB with its documents) and, with ``require_evidence``,
    rows whose documents yield no passage are skipped; local data is taken as it is and validated later. A local
    file's rows are selected by its ``split`` column (a split that matches no row is an error); without one, the
    first ``--num_questions`` rows are the evaluation split and the rows after them the train split (disjoint).
    """
    name = data_args.dataset_name
    if name is None:
        records = load_triviaqa_sample(split)
    elif name.endswith((".json", ".jsonl")) or os.path.isfile(name):
        import datasets

        if not os.path.isfile(name):
            raise ValueError(f"--dataset_name {name!r}: no such file")
        records = list(datasets.load_dataset("json", data_files=name, split="train"))
        records = _local_split(records, name, split, data_args)
    else:
        import datasets

        dataset = datasets.load_dataset(name, data_args.dataset_config_name, split=split, streaming=True)
        records, skipped = [], 0
        for row in dataset if limit is None or limit > 0 else ():
            record = _map_row(row, data_args)
            if require_evidence and "question" in record and not str(record.get("evidence") or "").strip():
                skipped += 1
                continue
            records.append(record)
            if limit is not None and len(records) >= limit:
                break  # before reading another (large) row
        if skipped:
            logger.info("%s[%s]: skipped %d rows without an evidence passage", name, split, skipped)
        return records
    records = [_map_row(record, data_args) for record in records]
    return records if limit is None else records[:limit]


def _local_split(records: list[dict], name: str, split: str, data_args: DataArguments) -> list[dict]:
    """The rows of a local file that make ``split`` (see :func:`load_records`); never the evaluated questions as
    train rows."""
    if records and "split" in records[0]:
        selected = [record for record in records if record.get("split") == split]
        if not selected:
            present = sorted({str(record.get("split")) for record in records})
            option = "--eval_split" if split == data_args.eval_split else "--train_split"
            raise ValueError(
                f"{option} {split!r} matches no rows of {name!r} (its 'split' column holds {present}): the question "
                "set is empty"
            )
        return selected
    defaults = DataArguments()
    if (data_args.eval_split, data_args.train_split) != (defaults.eval_split, defaults.train_split):
        raise ValueError(
            f"{name!r} has no 'split' column, so --eval_split {data_args.eval_split!r} / --train_split "
            f"{data_args.train_split!r} cannot select its rows: add a 'split' column, or keep the defaults (the first "
            "--num_questions rows are evaluated, the rows after them are the train rows)"
        )
    if split == data_args.eval_split:
        return records[: data_args.num_questions]
    train = records[data_args.num_questions :]
    if not train:
        raise ValueError(
            f"{name!r} has no 'split' column and {len(records)} rows: its first --num_questions={data_args.num_questions} "
            "rows are the evaluated questions, which leaves no train rows for the few-shot examples, calibration text "
            "or --do_train data (the evaluated questions are never used for them); add rows, or a 'split' column"
        )
    return train


def _map_row(row: dict, data_args: DataArguments) -> dict:
    """Rows of TriviaQA rc (entity_pages / search_results, no evidence column) are cut to one passage."""
    if "evidence" not in row and ("entity_pages" in row or "search_results" in row):
        if "question" not in row or "answer" not in row:
            return row  # let validation name the missing columns
        return record_from_triviaqa(row, max_evidence_chars=data_args.max_evidence_chars)
    return dict(row)


def calibration_batches(tokenizer, records: list[dict], data_args: DataArguments) -> list[dict]:
    """Train-split text (evidence, question, answer) packed into sequences of calibration_max_length tokens."""
    length, wanted = data_args.calibration_max_length, data_args.num_calibration_samples
    tokens: list[int] = []
    for record in records:
        answer = record["answer"]
        value = answer.get("value") if isinstance(answer, dict) else answer
        text = f"{record.get('evidence') or ''}\nQuestion: {record['question']}\nAnswer: {value}\n\n"
        tokens += tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(tokens) >= length * wanted:
            break
    sequences = [tokens[start : start + length] for start in range(0, len(tokens) - length + 1, length)][:wanted]
    if not sequences:
        raise ValueError(
            f"the train split ({len(records)} records) holds fewer than --calibration_max_length="
            f"{length} tokens of calibration text"
        )
    if len(sequences) < wanted:
        logger.warning(
            "calibration: the train split gives %d sequences of %d tokens, fewer than --num_calibration_samples=%d",
            len(sequences),
            length,
            wanted,
        )
    ids = torch.tensor(sequences, dtype=torch.long)
    return [{"input_ids": ids[start : start + 8]} for start in range(0, len(ids), 8)]


def load_tokenizer(model_args: ModelArguments, path: str):
    from transformers import AutoTokenizer

    source = model_args.tokenizer_name or path
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            resolve_model_path(source), revision=model_args.revision, trust_remote_code=model_args.trust_remote_code
        )
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise ValueError(
            f"cannot load a tokenizer from {source!r} ({type(error).__name__}: {str(error).splitlines()[0]}); "
            "the model folder needs its tokenizer files, or pass --tokenizer_name"
        ) from error
    if tokenizer is None or isinstance(tokenizer, bool):
        raise ValueError(f"{source!r} has no tokenizer; pass --tokenizer_name")
    return tokenizer


def load_model(model_args: ModelArguments, path: str, device: torch.device):
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": DTYPES[model_args.torch_dtype], "revision": model_args.revision}
    if device.type != "cpu":
        kwargs["device_map"] = {"": str(device)}
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=model_args.trust_remote_code, **kwargs)
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------------ evaluation
class QAEvaluator:
    """``evaluator(model, cell)`` -> EM/F1 of the cell's setting; whole batches are split across processes.

    Batches are formed once over all questions (by prompt length, longest first) and dealt round-robin to the
    processes, so every batch (and its padding) is the same whatever the number of processes; the predictions
    are gathered on every process and scored there, and the main process writes them under predictions/.
    """

    def __init__(self, state, tokenizer, prompts: dict[str, list[str]], answers: list, prompt_args, output_dir):
        self.state = state
        self.tokenizer = tokenizer
        self.prompts = prompts
        self.answers = answers
        self.max_new_tokens = prompt_args.max_new_tokens
        self.output_dir = Path(output_dir)
        self.batches = {}
        for setting, texts in prompts.items():
            lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
            order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
            size = prompt_args.batch_size
            self.batches[setting] = [order[start : start + size] for start in range(0, len(order), size)]

    def __call__(self, model, cell: CellKey) -> dict[str, float]:
        from accelerate.utils import gather_object

        prompts = self.prompts[cell.setting]
        local = []
        for batch in self.batches[cell.setting][self.state.process_index :: self.state.num_processes]:
            texts = generate_answers(
                model, self.tokenizer, [prompts[i] for i in batch], len(batch), self.max_new_tokens
            )
            local.extend(zip(batch, texts))
        gathered = gather_object(local) if self.state.num_processes > 1 else local
        outputs = [""] * len(prompts)
        for index, text in gathered:
            outputs[index] = text
        predictions = [extract_answer(text) for text in outputs]
        metrics = score_predictions(predictions, self.answers)
        if self.state.is_main_process:
            lines = [
                to_json({"index": i, "output": out, "prediction": pred}, indent=None)
                for i, (out, pred) in enumerate(zip(outputs, predictions))
            ]
            name = cell.id.replace("/", "__").replace(":", "-") + ".jsonl"
            atomic_write_text(self.output_dir / "predictions" / name, "\n".join(lines) + "\n")
        return metrics


# ------------------------------------------------------------------------------------------------ main
def set_cpu_threads(state, requested: int) -> None:
    """Only on request: on a shared CPU machine one thread per process is the fast choice (OpenMP threads that
    lose their core to another job make the others wait at every operation)."""
    if requested > 0 and state.device.type == "cpu":
        torch.set_num_threads(requested)


def _cell_seconds(records) -> dict[str, float]:
    """Evaluation, pruning and ranking time summed over every cell's record (also cells finished by earlier runs):
    one pruning serves every setting of a level, one ranking every level of a (method, pattern)."""
    totals = {name: 0.0 for name in ("evaluate_wall_s", "evaluate_cpu_s", "prune_wall_s", "prune_cpu_s")}
    levels, groups = set(), set()
    for record in records:
        timing, key = record.get("timing") or {}, record["key"]
        for clock in ("wall_s", "cpu_s"):
            totals[f"evaluate_{clock}"] += timing.get("evaluate", {}).get(clock, 0.0)
        prune = timing.get("prune", {})
        if (key["method"], key["pattern"], key["sparsity"]) not in levels:
            levels.add((key["method"], key["pattern"], key["sparsity"]))
            for clock in ("wall_s", "cpu_s"):
                totals[f"prune_{clock}"] += prune.get(clock, 0.0)
        if (key["method"], key["pattern"]) not in groups:
            groups.add((key["method"], key["pattern"]))
            for clock in ("wall_s", "cpu_s"):
                totals[f"prune_{clock}"] += prune.get("ranking", {}).get(clock, 0.0)
    return {name: round(value, 1) for name, value in totals.items()}


def _model_label(name: str) -> str:
    return "SmolLM2-135M-Instruct (packaged)" if name == SMOLLM2_ALIAS else Path(name.rstrip("/")).name


def records_digest(records: list[dict]) -> dict[str, Any]:
    """``{"count", "sha256"}`` of records' ids, questions, answers and evidence, in order: which questions a run
    scores (or shows as few-shot examples), however they were selected."""
    fields = ("question_id", "question", "answer", "evidence")
    canonical = to_json([{name: record.get(name) for name in fields} for record in records], indent=None)
    return {"count": len(records), "sha256": hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]}


def store_config(
    model_args, data_args, prompt_args, sweep_args, train_args, questions=None, shots=None
) -> dict[str, Any]:
    """What a cell's result depends on (the sweep grid is left out: extending it reuses finished cells).

    ``questions`` (the loaded evaluation records) and ``shots`` (the few-shot examples) enter as digests: which
    rows load can depend on more than the data options (with open_book among --settings, Hub rows without an
    evidence passage are skipped), and cells scored on other questions must never be reused.
    """
    config = {**asdict(model_args), **asdict(data_args), **asdict(prompt_args)}
    config.update(scope=sweep_args.scope, wanda_statistics=sweep_args.wanda_statistics)
    if questions is not None:
        config.update(eval_questions=records_digest(questions))
    if shots:
        config.update(few_shot_examples=records_digest(shots))
    if train_args.do_train:
        config.update({k: v for k, v in asdict(train_args).items() if k not in ("push_to_hub", "hub_model_id")})
        config.update(seed=sweep_args.seed)  # fine-tuning's data order and dropout follow the seed
    return config


def main(args: list[str] | None = None) -> dict[str, Any]:
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    model_args, data_args, prompt_args, sweep_args, train_args = parse_args(ARGUMENT_TYPES, args, description=__doc__)
    from accelerate import PartialState
    from transformers import set_seed

    state = PartialState(cpu=not torch.cuda.is_available())
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if state.is_main_process else logging.WARNING,
        force=True,
    )
    set_seed(sweep_args.seed)
    set_cpu_threads(state, sweep_args.cpu_threads)

    # 1. everything that can fail on bad input, before anything is written
    check_arguments(model_args, data_args, prompt_args, sweep_args, train_args)
    options = {"scope": sweep_args.scope}
    options = {key: value for key, value in options.items() if value is not None}
    options["num_calibration_samples"] = data_args.num_calibration_samples
    cells = plan_cells(sweep_args.methods, sweep_args.patterns, sweep_args.sparsities, sweep_args.settings, options)
    measure = with_levels(OpenClosedBook(), sweep_args.settings)
    open_book = OPEN_BOOK in measure.names
    questions = load_records(data_args, data_args.eval_split, data_args.num_questions, require_evidence=open_book)
    validate_qa_records(questions, require_evidence=open_book)
    needs_train = prompt_args.few_shot > 0 or train_args.do_train or any(m != "magnitude" for m in sweep_args.methods)
    # enough train records for the calibration text (~100 tokens per record, at the least) and the few-shot examples
    calibration_records = -(-data_args.num_calibration_samples * data_args.calibration_max_length // 100)
    train_limit = max(512, prompt_args.few_shot, calibration_records)
    if train_args.do_train:
        train_limit = max(train_args.max_train_samples, prompt_args.few_shot)  # bounded: never the whole split
    train_records = []
    if needs_train:
        train_records = load_records(data_args, data_args.train_split, train_limit)
        validate_qa_records(train_records, require_evidence=open_book and prompt_args.few_shot > 0)
    if prompt_args.few_shot > len(train_records):
        raise ValueError(f"--few_shot={prompt_args.few_shot}: the train split has only {len(train_records)} records")
    path = resolve_model_path(model_args.model_name_or_path)
    tokenizer = load_tokenizer(model_args, path)
    calibration = None
    if any(method != "magnitude" for method in sweep_args.methods):
        calibration = calibration_batches(tokenizer, train_records, data_args)

    use_chat = {"auto": None, "yes": True, "no": False}[prompt_args.use_chat_template]
    shots = train_records[: prompt_args.few_shot]
    prompts = {}
    for level in measure.levels:
        template = prompt_args.open_book_template if level.name == OPEN_BOOK else prompt_args.closed_book_template
        prompts[level.name] = [
            build_prompt(
                tokenizer,
                record["question"],
                record.get("evidence"),
                shots,
                template,
                use_chat_template=use_chat,
                system_prompt=prompt_args.system_prompt,
            )
            for record in measure.build(level, questions)
        ]
    model = load_model(model_args, path, state.device)
    logger.info(
        "%s: %d questions x %d settings, %d cells, %d process(es) on %s",
        model_args.model_name_or_path,
        len(questions),
        len(measure.levels),
        len(cells),
        state.num_processes,
        state.device,
    )

    # 2. the sweep: resumable, one record per finished cell (main process writes)
    config = store_config(model_args, data_args, prompt_args, sweep_args, train_args, questions, shots)
    with state.main_process_first():
        store = ResultsStore(
            sweep_args.output_dir,
            config,
            readonly=not state.is_main_process,
            overwrite=sweep_args.overwrite_output_dir and state.is_main_process,
        )
    evaluator = QAEvaluator(state, tokenizer, prompts, [q["answer"] for q in questions], prompt_args, store.directory)
    prepare = None
    if train_args.do_train:
        examples = training_examples(tokenizer, train_records, measure, shots, use_chat, prompt_args)
        prepare = make_trainer_hook(state, tokenizer, examples, train_args, sweep_args)
    runner = SweepRunner(
        model,
        store,
        evaluator,
        sparsity_options=options,
        calibration_data=calibration,
        wanda_statistics=sweep_args.wanda_statistics,
        prepare=prepare,
        apply_masks=not (train_args.do_train and train_args.regime == "freeze"),
        is_main_process=state.is_main_process,
    )
    records = runner.run(cells)
    state.wait_for_everyone()

    # 3. report (main process): normalised scores, tolerance, table, figure, all_results.json
    summary = summarize(
        records,
        metric=sweep_args.metric,
        threshold=sweep_args.threshold,
        settings=measure.names,
        setting_labels={level.name: level.label for level in measure.levels},
    )
    if state.is_main_process:
        figure = plot_normalized_curves(
            summary,
            Path(sweep_args.output_dir) / FIGURE,
            title=f"TriviaQA ({len(questions)} questions), {_model_label(model_args.model_name_or_path)}: normalised "
            f"{'exact match' if sweep_args.metric == 'exact_match' else 'F1'} vs sparsity",
        )
        run = {
            "model_name_or_path": model_args.model_name_or_path,
            "dataset": data_args.dataset_name or "hf_junkdna triviaqa_sample",
            "num_questions": len(questions),
            "methods": sweep_args.methods,
            "patterns": sweep_args.patterns,
            "num_processes": state.num_processes,
            "device": str(state.device),
            "torch_threads": torch.get_num_threads(),
            "cells_evaluated_now": runner.evaluations,
            "cells_seconds": _cell_seconds(records),
            "wall_s": round(time.perf_counter() - start_wall, 1),
            "cpu_s_main_process": round(time.process_time() - start_cpu, 1),
            "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if args is None else args)]),
            "config": config,
        }
        paths = write_report(sweep_args.output_dir, summary, run=run, figure=FIGURE)
        print(format_table(summary))
        logger.info("wrote %s, %s and %s", paths["all_results"], paths["table"], figure)
    if train_args.push_to_hub:
        push_checkpoints(runner, tokenizer, records, summary, model_args, data_args, train_args, sweep_args, state)
    state.wait_for_everyone()
    return summary


# ------------------------------------------------------------------------------------------------ --do_train
def training_examples(tokenizer, records, measure, shots, use_chat, prompt_args) -> list[dict]:
    """Prompt + answer sequences from the train split, one per record and setting; loss on the answer only."""
    eos = tokenizer.eos_token or ""
    examples = []
    for level in measure.levels:
        template = prompt_args.open_book_template if level.name == OPEN_BOOK else prompt_args.closed_book_template
        for record in measure.build(level, records):
            prompt = build_prompt(
                tokenizer, record["question"], record.get("evidence"), shots, template,
                use_chat_template=use_chat, system_prompt=prompt_args.system_prompt,
            )  # fmt: skip
            answer = record["answer"]["value"] if isinstance(record["answer"], dict) else str(record["answer"])
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            answer_ids = tokenizer(" " + answer.strip() + eos, add_special_tokens=False)["input_ids"]
            examples.append({"input_ids": prompt_ids + answer_ids, "labels": [-100] * len(prompt_ids) + answer_ids})
    return examples


def make_trainer_hook(state, tokenizer, examples, train_args, sweep_args):
    """``prepare(model, masks, cell)`` for the sweep: fine-tune with SparseTrainer under the regime (the dense
    reference under "dense"), so every score compares fine-tuned models."""
    SparseTrainer, _ = _training_api()
    from transformers import TrainingArguments

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def collate(batch):
        width = max(len(example["input_ids"]) for example in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, example in enumerate(batch):
            length = len(example["input_ids"])
            input_ids[row, :length] = torch.tensor(example["input_ids"])
            labels[row, :length] = torch.tensor(example["labels"])
            attention_mask[row, :length] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def prepare(model, masks, cell: CellKey) -> None:
        regime = "dense" if masks is None else train_args.regime
        name = cell.id.strip("/").replace("/", "__").replace(":", "-")
        args = TrainingArguments(
            output_dir=str(Path(sweep_args.output_dir) / "train" / name),
            per_device_train_batch_size=train_args.per_device_train_batch_size,
            learning_rate=train_args.learning_rate,
            num_train_epochs=train_args.num_train_epochs,
            save_strategy="no",
            report_to="none",
            logging_steps=10,
            seed=sweep_args.seed,
            use_cpu=state.device.type == "cpu",
            remove_unused_columns=False,
            disable_tqdm=not state.is_main_process,
        )
        trainer = SparseTrainer(
            model=model,
            args=args,
            train_dataset=examples,
            data_collator=collate,
            masks=masks,
            regime=regime if masks is not None else None,
        )
        result = trainer.train()
        logger.info("%s: fine-tuned under regime %r, loss %.4f", name, regime, result.training_loss)
        model.eval()

    return prepare


# ------------------------------------------------------------------------------------------------ --push_to_hub
def push_checkpoints(runner, tokenizer, records, summary, model_args, data_args, train_args, sweep_args, state):
    """Push one checkpoint per (method, pattern): the model at ``--push_sparsity`` (default: the highest level
    swept), its masks, and a card with that method's dense and sparse scores in every setting."""
    push_pruned_to_hub = _hub_api()
    labels = summary["setting_labels"]
    dense = [r for r in records if r["key"]["method"] == "dense"]
    commits = {}
    for name, group in summary["groups"].items():
        levels = sorted({p["sparsity"] for points in group["curves"].values() for p in points if p["sparsity"] > 0})
        level = train_args.push_sparsity if train_args.push_sparsity is not None else levels[-1]
        if level not in levels:
            raise ValueError(f"--push_sparsity={level}: {name} was swept at {levels} only")
        own = [r for r in records if (r["key"]["method"], r["key"]["pattern"]) == (group["method"], group["pattern"])]
        regime = train_args.regime if train_args.do_train else "sparse"
        results = [
            {
                "sparsity": r["key"]["sparsity"],
                "score": r["metrics"][sweep_args.metric],
                "metric": sweep_args.metric,
                "setting": labels.get(r["key"]["setting"], r["key"]["setting"]),
                "method": None if r["key"]["method"] == "dense" else r["key"]["method"],
                "pattern": None if r["key"]["method"] == "dense" else r["key"]["pattern"],
                "regime": "dense" if r["key"]["method"] == "dense" else regime,
                "dataset": data_args.dataset_name or "triviaqa_sample",
            }
            for r in dense + own
            if r["metrics"].get(sweep_args.metric) is not None
        ]
        repo_id = (
            f"{train_args.hub_model_id}-{group['method']}-{group['pattern'].replace(':', 'of')}-s{round(level * 100)}"
        )
        with runner.pruned(group["method"], group["pattern"], level) as masks:
            if state.is_main_process:
                commits[repo_id] = push_pruned_to_hub(
                    runner.model,
                    repo_id,
                    masks,
                    results=results,
                    regime=regime,
                    tokenizer=tokenizer,
                    task="TriviaQA",
                    difficulty={"measure": "open-book vs closed-book", "value": ", ".join(summary["settings"])},
                    command="accelerate launch recipes/triviaqa.py " + " ".join(sys.argv[1:]),
                    threshold=sweep_args.threshold,
                    base_model=None
                    if model_args.model_name_or_path.startswith("packaged:")
                    else model_args.model_name_or_path,
                    private=train_args.hub_private_repo,
                )
                logger.info("pushed %s at sparsity %g to %s", name, level, repo_id)
        state.wait_for_everyone()
    return commits


if __name__ == "__main__":
    main()
