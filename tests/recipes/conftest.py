"""Fixtures for recipe tests: a tiny causal LM saved with a real tokenizer, and tiny TriviaQA-schema data."""

import json
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_qa_model(tmp_path_factory) -> Path:
    """A 2-layer Llama (random weights) with SmolLM2's tokenizer and chat template, saved to a folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from hf_junkdna.offline import smollm2_path

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    path = tmp_path_factory.mktemp("tiny_qa_model")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_without_tokenizer(tmp_path_factory) -> Path:
    from tiny_models import tiny_llama

    path = tmp_path_factory.mktemp("no_tokenizer")
    tiny_llama().save_pretrained(path)
    return path


_QA_RECORDS = [
    {
        "question_id": f"t{index}",
        "question": question,
        "answer": {"value": answer, "aliases": [answer]},
        "evidence": evidence,
        "split": split,
    }
    for index, (question, answer, evidence, split) in enumerate(
        [
            ("What is the capital of France?", "Paris", "Paris is the capital of France.", "validation"),
            ("Which planet is red?", "Mars", "Mars is called the red planet.", "validation"),
            ("How many legs does a spider have?", "eight", "Spiders have eight legs.", "validation"),
            ("What do bees make?", "honey", "Bees make honey from nectar.", "validation"),
            ("What colour is the sky?", "blue", "On a clear day the sky is blue.", "validation"),
            ("What is frozen water?", "ice", "Water freezes into ice at zero degrees.", "train"),
            ("Who wrote Hamlet?", "Shakespeare", "Hamlet is a play by William Shakespeare.", "train"),
            ("What is the largest ocean?", "Pacific", "The Pacific is the largest ocean on Earth.", "train"),
        ]
    )
]


@pytest.fixture
def qa_records() -> list[dict]:
    """Eight TriviaQA-schema records: five validation questions, three train ones."""
    return json.loads(json.dumps(_QA_RECORDS))


@pytest.fixture
def qa_file(tmp_path, qa_records) -> Path:
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in qa_records))
    return path
