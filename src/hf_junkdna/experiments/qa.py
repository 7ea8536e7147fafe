"""Question answering helpers for the TriviaQA setting (open-book vs closed-book): data, prompts, generation, scoring.

Pure helpers; the recipe (``recipes/triviaqa.py``) and the sweep runner do the orchestration.

Records use a subset of the TriviaQA "rc" schema so that the real dataset maps onto them by column name::

    {
        "question_id": "jdna_tqa_0000",
        "question": "What is the capital of France?",
        "answer": {"value": "Paris", "aliases": ["Paris"],
                   "normalized_value": "paris", "normalized_aliases": ["paris"]},
        "evidence": "Paris is the capital and largest city of France. ...",
        "split": "validation",
    }

``mandarjoshi/trivia_qa`` (config ``rc``) has ``question_id``, ``question`` and ``answer`` with these same keys;
it has no ``evidence`` column but ``entity_pages.wiki_context`` and ``search_results.search_context`` (whole
documents): :func:`record_from_triviaqa` cuts a passage around the first mention of an answer alias from them.

Scoring follows the official TriviaQA evaluation: answers are lower-cased, underscores and punctuation become
spaces, the articles a/an/the are dropped and white space is collapsed; exact match and token F1 are the maximum
over the gold aliases. Scores are fractions in [0, 1] (the official script reports percentages).
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

SAMPLE_RESOURCE = "triviaqa_sample.jsonl"
SPLITS = ("train", "validation")
REQUIRED_COLUMNS = ("question", "answer")
EVIDENCE_COLUMN = "evidence"

# The user's turn. The instruction asks for the bare answer: small models otherwise answer in full sentences,
# which exact match counts as wrong.
CLOSED_BOOK_TEMPLATE = "Answer the question with a single word or short phrase.\nQuestion: {question}"
OPEN_BOOK_TEMPLATE = (
    "Read the passage, then answer the question with a single word or short phrase.\n"
    "Passage: {evidence}\nQuestion: {question}"
)
# Used instead of a chat template when the tokenizer has none (and for few-shot answers in that format).
PLAIN_ANSWER_PREFIX = "\nAnswer:"

_PUNCTUATION = set(string.punctuation) | {"\u2018", "\u2019", "\u00b4", "`"}
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# "Answer:", "A:", "The answer is", "Final answer -" at the start of a reply.
_ANSWER_LABEL = re.compile(r"^\s*(?:(?:the\s+)?(?:final\s+)?answer\s*(?:is\b\s*:?|[:\-])|a\s*:)\s*", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------------------------
# Scoring


def normalize_answer(text: str) -> str:
    """TriviaQA normalisation: lower case, ``_`` and punctuation to spaces, drop a/an/the, collapse white space."""
    text = text.lower().replace("_", " ")
    text = "".join(" " if ch in _PUNCTUATION else ch for ch in text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_aliases(answer: Mapping[str, Any] | str | Sequence[str]) -> list[str]:
    """All gold strings of one answer (value, aliases, normalised forms), normalised and de-duplicated, in order.

    Accepts a TriviaQA ``answer`` dict, a single string, or a list of strings.
    """
    if isinstance(answer, str):
        candidates: list[str] = [answer]
    elif isinstance(answer, Mapping):
        candidates = []
        for key in ("value", "normalized_value"):
            if answer.get(key):
                candidates.append(answer[key])
        for key in ("aliases", "normalized_aliases"):
            candidates.extend(answer.get(key) or [])
    else:
        candidates = list(answer)
    seen: dict[str, None] = {}
    for candidate in candidates:
        normalized = normalize_answer(str(candidate))
        if normalized:
            seen.setdefault(normalized, None)
    return list(seen)


def exact_match(prediction: str, answer: Mapping[str, Any] | str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold alias, else 0.0."""
    predicted = normalize_answer(prediction)
    return float(any(predicted == gold for gold in answer_aliases(answer)))


def _token_f1(predicted: str, gold: str) -> float:
    predicted_tokens, gold_tokens = predicted.split(), gold.split()
    common = Counter(predicted_tokens) & Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(predicted_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, answer: Mapping[str, Any] | str | Sequence[str]) -> float:
    """Token-level F1 between the normalised prediction and the best-matching normalised gold alias."""
    predicted = normalize_answer(prediction)
    return max((_token_f1(predicted, gold) for gold in answer_aliases(answer)), default=0.0)


def score_predictions(predictions: Sequence[str], answers: Sequence[Any]) -> dict[str, float]:
    """Mean exact match and F1 over paired predictions and gold answers: ``{"exact_match", "f1", "num_questions"}``."""
    if len(predictions) != len(answers):
        raise ValueError(f"got {len(predictions)} predictions for {len(answers)} answers")
    if not predictions:
        raise ValueError("cannot score an empty question set")
    em = sum(exact_match(p, a) for p, a in zip(predictions, answers)) / len(predictions)
    f = sum(f1(p, a) for p, a in zip(predictions, answers)) / len(predictions)
    return {"exact_match": em, "f1": f, "num_questions": len(predictions)}


def extract_answer(text: str) -> str:
    """The answer inside a model's continuation: first non-empty line, without an "Answer:" label, markdown
    emphasis, surrounding quotes or a trailing full stop."""
    line = next((candidate.strip() for candidate in text.splitlines() if candidate.strip()), "")
    line = _ANSWER_LABEL.sub("", line)
    line = line.strip().strip("*_").strip().strip("\"'").strip()
    return line.rstrip(".").strip()


# ---------------------------------------------------------------------------------------------------------------
# Data


def validate_qa_records(records: Any, require_evidence: bool = False) -> None:
    """Raise a ValueError naming what is wrong: an empty set, missing columns, or an answer without any alias.

    ``records`` is a list of dicts or a ``datasets.Dataset``. ``require_evidence`` adds the ``evidence`` column
    (needed for open-book prompts).
    """
    required = list(REQUIRED_COLUMNS) + ([EVIDENCE_COLUMN] if require_evidence else [])
    column_names = getattr(records, "column_names", None)
    if column_names is not None:  # datasets.Dataset: check the schema once, then the answers
        if len(records) == 0:
            raise ValueError("the question set is empty (0 records)")
        missing = [column for column in required if column not in column_names]
        if missing:
            raise ValueError(
                f"the question set is missing column(s) {missing}; it has {sorted(column_names)}. "
                "Expected TriviaQA-style records: question, answer {value, aliases}"
                + (", evidence" if require_evidence else "")
            )
    records = list(records)
    if not records:
        raise ValueError("the question set is empty (0 records)")
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise ValueError(f"record {index} is a {type(record).__name__}, expected a dict with columns {required}")
        missing = [column for column in required if column not in record or record[column] is None]
        if missing:
            raise ValueError(
                f"record {index} is missing column(s) {missing}; it has {sorted(record)}. "
                "Expected TriviaQA-style records: question, answer {value, aliases}"
                + (", evidence" if require_evidence else "")
            )
        if not str(record["question"]).strip():
            raise ValueError(f"record {index} has an empty 'question'")
        if not answer_aliases(record["answer"]):
            raise ValueError(
                f"record {index} ({record.get('question_id', '?')}): 'answer' has no usable value or alias"
            )
        if require_evidence and not str(record[EVIDENCE_COLUMN]).strip():
            raise ValueError(f"record {index} ({record.get('question_id', '?')}) has an empty 'evidence' passage")


def load_triviaqa_sample(split: str | None = None) -> list[dict]:
    """The TriviaQA-schema sample shipped with the package (written for the project; common-knowledge facts).

    ``split``: ``"validation"`` (evaluation questions), ``"train"`` (fine-tuning / few-shot pool) or None for all.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    text = resources.files("hf_junkdna.data").joinpath(SAMPLE_RESOURCE).read_text(encoding="utf-8")
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    if split is not None:
        records = [record for record in records if record["split"] == split]
    return records


def record_from_triviaqa(example: Mapping[str, Any], max_evidence_chars: int = 1200) -> dict:
    """Map one row of ``mandarjoshi/trivia_qa`` ("rc") onto the sample's schema.

    The evidence is a window of at most ``max_evidence_chars`` characters from the Wikipedia pages (else the web
    search results), centred on the first mention of an answer alias, or the start of the first document when
    none mentions one; "" when the row has no documents.
    """
    answer = example["answer"]
    documents: list[str] = []
    for column, key in (("entity_pages", "wiki_context"), ("search_results", "search_context")):
        documents.extend(context for context in (example.get(column) or {}).get(key, []) if context)
    evidence = ""
    aliases = [answer.get("value", "")] + list(answer.get("aliases") or [])
    for document in documents:
        lowered = document.lower()
        hits = [position for alias in aliases if alias and (position := lowered.find(alias.lower())) >= 0]
        if hits:
            start = max(0, min(hits) - max_evidence_chars // 2)
            evidence = document[start : start + max_evidence_chars]
            break
    if not evidence and documents:
        evidence = documents[0][:max_evidence_chars]
    return {
        "question_id": example.get("question_id", ""),
        "question": example["question"],
        "answer": {
            "value": answer.get("value", ""),
            "aliases": list(answer.get("aliases") or []),
            "normalized_value": answer.get("normalized_value", ""),
            "normalized_aliases": list(answer.get("normalized_aliases") or []),
        },
        "evidence": evidence.strip(),
    }


# ---------------------------------------------------------------------------------------------------------------
# Prompts and generation


def _shot(example: Any) -> tuple[str, str, str | None]:
    """(question, answer, evidence) of one few-shot example: a record dict or a (question, answer[, evidence])."""
    if isinstance(example, Mapping):
        answer = example["answer"]
        value = answer.get("value") if isinstance(answer, Mapping) else answer
        return example["question"], str(value), example.get(EVIDENCE_COLUMN)
    question, answer, *rest = example
    return question, answer, rest[0] if rest else None


def build_prompt(
    tokenizer: Any,
    question: str,
    evidence: str | None = None,
    few_shot: Iterable[Any] = (),
    template: str | None = None,
    *,
    use_chat_template: bool | None = None,
    system_prompt: str | None = None,
) -> str:
    """The text given to the model for one question; open-book when ``evidence`` is given.

    ``template`` formats the user's turn from ``{question}`` (and ``{evidence}``, open-book); by default
    :data:`CLOSED_BOOK_TEMPLATE` / :data:`OPEN_BOOK_TEMPLATE`. ``few_shot`` examples (records or
    ``(question, answer[, evidence])`` tuples) come first, each as a user turn and the assistant's answer; they
    carry their evidence only in open-book prompts. The tokenizer's chat template is used when it has one
    (``use_chat_template=None``), else turns are joined as plain text ending in ``"Answer:"``.
    """
    if template is None:
        template = OPEN_BOOK_TEMPLATE if evidence is not None else CLOSED_BOOK_TEMPLATE
    if evidence is not None and "{evidence}" not in template:
        raise ValueError("an open-book prompt needs a template with an {evidence} field")
    if use_chat_template is None:
        use_chat_template = bool(getattr(tokenizer, "chat_template", None))

    def user_turn(q: str, e: str | None) -> str:
        return template.format(question=q.strip(), evidence=(e or "").strip())

    turns: list[tuple[str, str]] = []
    for example in few_shot:
        shot_question, shot_answer, shot_evidence = _shot(example)
        if evidence is not None and shot_evidence is None:
            raise ValueError(f"open-book few-shot example {shot_question!r} has no evidence")
        turns.append((user_turn(shot_question, shot_evidence if evidence is not None else None), shot_answer))

    if use_chat_template:
        messages: list[dict[str, str]] = [{"role": "system", "content": system_prompt}] if system_prompt else []
        for user, assistant in turns:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        messages.append({"role": "user", "content": user_turn(question, evidence)})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    blocks = [system_prompt.strip()] if system_prompt else []
    blocks += [f"{user}{PLAIN_ANSWER_PREFIX} {assistant}" for user, assistant in turns]
    blocks.append(f"{user_turn(question, evidence)}{PLAIN_ANSWER_PREFIX}")
    return "\n\n".join(blocks)


def _pad_id(tokenizer: Any, model: Any) -> int:
    for candidate in (
        tokenizer.pad_token_id,
        tokenizer.eos_token_id,
        getattr(model.generation_config, "pad_token_id", None),
    ):
        if isinstance(candidate, int):
            return candidate
    return 0


def _input_device(model: Any) -> torch.device:
    # The embedding's device, which is where inputs go also when a model is spread over devices.
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    return weight.device if isinstance(weight, torch.Tensor) else next(model.parameters()).device


class _FirstLineDone(StoppingCriteria):
    """Stops a row once its continuation holds a line break after some non-blank text (a finished first line)."""

    def __init__(self, tokenizer: Any, prompt_width: int):
        self.tokenizer = tokenizer
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width :], skip_special_tokens=True)
        done = [bool(text.strip()) and "\n" in text.lstrip() for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@torch.inference_mode()
def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    batch_size: int = 16,
    max_new_tokens: int = 16,
    *,
    stop_at_first_line: bool = False,
    add_special_tokens: bool | None = None,
) -> list[str]:
    """Greedy continuations of ``prompts`` (decoded, prompt excluded), in the order of the prompts.

    Batched, with the KV cache; decoder-only models are padded on the left (encoder-decoder models on the right).
    Prompts are batched by length (longest first) to waste little on padding; the model runs in eval mode and
    its previous mode is restored. ``stop_at_first_line`` ends a row once its first non-blank line is complete:
    :func:`extract_answer` gives the same answers, sooner. ``add_special_tokens=None`` adds the tokenizer's
    special tokens unless a prompt already starts with the BOS token (as chat templates often write it).
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, not a single string")
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size and max_new_tokens must be >= 1, got {batch_size} and {max_new_tokens}")
    prompts = list(prompts)
    if not prompts:
        return []
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    bos = getattr(tokenizer, "bos_token", None)
    encoded = [
        tokenizer(
            prompt,
            add_special_tokens=(
                add_special_tokens if add_special_tokens is not None else not (bos and prompt.startswith(bos))
            ),
        )["input_ids"]
        for prompt in prompts
    ]
    pad_id = _pad_id(tokenizer, model)
    extra: dict[str, Any] = {}
    if getattr(model.generation_config, "eos_token_id", None) is None and tokenizer.eos_token_id is not None:
        extra["eos_token_id"] = tokenizer.eos_token_id
    device = _input_device(model)
    order = sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), i))
    outputs: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids = torch.tensor(encoded[i], dtype=torch.long)
                span = slice(0, len(ids)) if encoder_decoder else slice(width - len(ids), width)
                input_ids[row, span] = ids
                attention_mask[row, span] = 1
            if stop_at_first_line:
                # encoder-decoder outputs hold only the decoder's tokens (one start token first)
                extra["stopping_criteria"] = StoppingCriteriaList(
                    [_FirstLineDone(tokenizer, prompt_width=0 if encoder_decoder else width)]
                )
            generated = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                do_sample=False,
                num_beams=1,
                use_cache=True,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
                **extra,
            )
            continuations = generated if encoder_decoder else generated[:, width:]
            texts = tokenizer.batch_decode(continuations, skip_special_tokens=True)
            for i, text in zip(batch, texts):
                outputs[i] = text
    finally:
        model.train(was_training)
    return outputs
