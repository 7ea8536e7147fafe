"""QA helpers: TriviaQA scoring worked by hand, the shipped sample, prompts, and batched greedy generation."""

import json
import time

import pytest
import torch
from tiny_models import tiny_llama

from hf_junkdna.experiments import qa

# ---------------------------------------------------------------------------------------------------------------
# A tiny word-level tokenizer (vocabulary < 128, the tiny Llama's) with a ChatML-style chat template.

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
WORDS = (
    "what is the capital of france paris japan tokyo how many legs does a spider have eight answer question "
    "passage read then with single word or short phrase red blue green one two three four five six seven nine ten"
).split()


def tiny_tokenizer(chat_template: str | None = CHATML):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[UNK]", "<pad>", "<eos>", "<|im_start|>", "<|im_end|>"]
    vocab = {token: index for index, token in enumerate(specials + sorted(set(WORDS)))}
    assert len(vocab) <= 128
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.decoder = decoders.WordPiece(prefix="##")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="<pad>",
        eos_token="<eos>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = chat_template
    return tokenizer


# ---------------------------------------------------------------------------------------------------------------
# Normalisation and scores, worked by hand


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Paris", "paris"),
        ("  The Eiffel-Tower!  ", "eiffel tower"),  # article dropped, hyphen becomes a space
        ("An apple a day", "apple day"),
        ("theatre and another", "theatre and another"),  # articles only as whole words
        # TriviaQA turns punctuation into spaces (SQuAD deletes it), and the lone "a" is then an article
        ("U.S.A.", "u s"),
        ("Newton\u2019s   law", "newton s law"),  # curly apostrophe and runs of spaces
        ("mount_everest", "mount everest"),
        ("100\u00b0C", "100\u00b0c"),  # the degree sign is not ASCII punctuation
        ("A", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert qa.normalize_answer(text) == expected


def test_exact_match_takes_any_alias_after_normalisation():
    answer = {"value": "United States", "aliases": ["USA", "America"]}
    assert qa.exact_match("the USA.", answer) == 1.0
    assert qa.exact_match("America!", answer) == 1.0
    assert qa.exact_match("united   states", answer) == 1.0
    assert qa.exact_match("The United States of America", answer) == 0.0  # exact, not containment
    assert qa.exact_match("Paris", "Paris") == 1.0  # a bare string is one alias
    assert qa.exact_match("Paris, France", ["Paris", "City of Light"]) == 0.0
    # normalized_aliases count as gold too (real TriviaQA rows carry them)
    assert qa.exact_match("u s a", {"value": "x", "aliases": [], "normalized_aliases": ["u s a"]}) == 1.0


def test_f1_partial_overlap_and_best_alias():
    # prediction "leonardo" vs gold "leonardo da vinci": precision 1, recall 1/3 -> F1 = 2 * (1/3) / (4/3) = 0.5
    assert qa.f1("Leonardo", "Leonardo da Vinci") == pytest.approx(0.5)
    # ... but an alias that matches exactly wins
    assert qa.f1("Leonardo", {"value": "Leonardo da Vinci", "aliases": ["Leonardo"]}) == 1.0
    # "the big red dog" -> [big, red, dog] vs [red, dog, house]: 2 common, P = R = 2/3
    assert qa.f1("the big red dog", "red dog house") == pytest.approx(2 / 3)
    # repeated tokens count once per gold occurrence: [dog, dog] vs [dog]: P = 1/2, R = 1 -> 2/3
    assert qa.f1("dog dog", "dog") == pytest.approx(2 / 3)
    assert qa.f1("cat", "dog") == 0.0
    assert qa.f1("", "dog") == 0.0
    assert qa.f1("The Pacific Ocean.", {"value": "Pacific Ocean", "aliases": ["Pacific"]}) == 1.0


def test_score_predictions_means_and_errors():
    scores = qa.score_predictions(["Paris", "Leonardo", "cat"], ["Paris", "Leonardo da Vinci", "dog"])
    assert scores["exact_match"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert scores["num_questions"] == 3
    with pytest.raises(ValueError, match="empty"):
        qa.score_predictions([], [])
    with pytest.raises(ValueError, match="2 predictions for 1 answers"):
        qa.score_predictions(["a", "b"], ["a"])


@pytest.mark.parametrize(
    "text, expected",
    [
        (" Paris\n\nAnswer the question with a single word.", "Paris"),
        ("\n\n  Mars.  \nmore", "Mars"),
        ("Answer: Tokyo", "Tokyo"),
        ("A: eight", "eight"),
        ("The answer is Brazil.", "Brazil"),
        ("**blue**", "blue"),
        ('"Hamlet"', "Hamlet"),
        ("Washington, D.C.", "Washington, D.C"),
        ("A spider has eight legs.", "A spider has eight legs"),  # no guessing inside sentences
        ("", ""),
        ("   \n ", ""),
    ],
)
def test_extract_answer(text, expected):
    assert qa.extract_answer(text) == expected


# ---------------------------------------------------------------------------------------------------------------
# The shipped sample and record validation


def test_shipped_sample_schema_and_splits():
    records = qa.load_triviaqa_sample()
    validation = qa.load_triviaqa_sample("validation")
    train = qa.load_triviaqa_sample("train")
    assert len(validation) == 256 and len(train) >= 64
    assert len(records) == len(validation) + len(train)
    assert len({r["question_id"] for r in records}) == len(records)
    assert not {r["question"] for r in validation} & {r["question"] for r in train}
    qa.validate_qa_records(records, require_evidence=True)
    for record in records:
        assert set(record) >= {"question_id", "question", "answer", "evidence", "split"}
        answer = record["answer"]
        assert answer["value"] in answer["aliases"]
        assert answer["normalized_value"] == qa.normalize_answer(answer["value"])
        assert answer["normalized_aliases"] == qa.answer_aliases(answer["aliases"])
        # open-book is answerable: the passage mentions an alias
        passage = f" {qa.normalize_answer(record['evidence'])} "
        assert any(f" {alias} " in passage for alias in answer["normalized_aliases"]), record["question_id"]
    with pytest.raises(ValueError, match="split must be one of"):
        qa.load_triviaqa_sample("test")


def test_validate_qa_records_names_what_is_missing():
    good = {"question": "What is the capital of France?", "answer": {"value": "Paris", "aliases": ["Paris"]}}
    qa.validate_qa_records([good])
    with pytest.raises(ValueError, match="empty"):
        qa.validate_qa_records([])
    with pytest.raises(ValueError, match=r"record 1 is missing column\(s\) \['answer'\]"):
        qa.validate_qa_records([good, {"question": "Why?", "answers": ["because"]}])
    with pytest.raises(ValueError, match=r"\['evidence'\]"):
        qa.validate_qa_records([good], require_evidence=True)
    with pytest.raises(ValueError, match="no usable value or alias"):
        qa.validate_qa_records([{"question": "First letter?", "answer": {"value": "A", "aliases": ["the"]}}])
    with pytest.raises(ValueError, match="empty 'question'"):
        qa.validate_qa_records([{**good, "question": "  "}])


def test_validate_qa_records_on_a_datasets_dataset():
    import datasets  # a hard dependency: never skipped

    rows = datasets.Dataset.from_list([{"query": "What is two plus two?", "label": "four"}])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['question', 'answer'\]; it has \['label', 'query'\]"):
        qa.validate_qa_records(rows)
    with pytest.raises(ValueError, match="empty"):
        qa.validate_qa_records(rows.select([]))
    sample = datasets.Dataset.from_list(qa.load_triviaqa_sample("train")[:4])
    qa.validate_qa_records(sample, require_evidence=True)


def test_record_from_triviaqa_maps_the_real_columns():
    filler = "Some words about other things. " * 60
    row = {
        "question_id": "tc_1",
        "question": "Which planet is known as the Red Planet?",
        "question_source": "http://example.org",
        "entity_pages": {
            "doc_source": ["TagMe"],
            "title": ["Mars"],
            "wiki_context": [filler + "MARS is red. " + filler],
        },
        "search_results": {"search_context": ["unused"]},
        "answer": {
            "value": "Mars",
            "aliases": ["Mars", "Red Planet"],
            "normalized_value": "mars",
            "normalized_aliases": ["mars", "red planet"],
            "type": "WikipediaEntity",
        },
    }
    record = qa.record_from_triviaqa(row, max_evidence_chars=200)
    assert record["question_id"] == "tc_1" and record["answer"]["aliases"] == ["Mars", "Red Planet"]
    assert "MARS is red." in record["evidence"] and len(record["evidence"]) <= 200
    qa.validate_qa_records([record], require_evidence=True)
    no_docs = qa.record_from_triviaqa({**row, "entity_pages": {"wiki_context": []}, "search_results": {}})
    assert no_docs["evidence"] == ""


# ---------------------------------------------------------------------------------------------------------------
# Prompts


def test_build_prompt_uses_the_chat_template():
    tokenizer = tiny_tokenizer()
    closed = qa.build_prompt(tokenizer, "What is the capital of France?")
    assert closed.startswith("<|im_start|>user\n") and closed.endswith("<|im_start|>assistant\n")
    assert "What is the capital of France?" in closed and "Passage" not in closed

    opened = qa.build_prompt(tokenizer, "What is the capital of France?", evidence="Paris is the capital.")
    assert "Passage: Paris is the capital.\nQuestion: What is the capital of France?" in opened

    shots = [{"question": "What is the capital of Japan?", "answer": {"value": "Tokyo"}, "evidence": "Tokyo is."}]
    few = qa.build_prompt(tokenizer, "Q?", evidence="E.", few_shot=shots, system_prompt="Be brief.")
    assert few.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert "Passage: Tokyo is.\nQuestion: What is the capital of Japan?<|im_end|>\n" in few
    assert "<|im_start|>assistant\nTokyo<|im_end|>" in few
    # closed-book prompts never show the shots' evidence
    assert "Tokyo is." not in qa.build_prompt(tokenizer, "Q?", few_shot=shots)


def test_build_prompt_plain_without_a_chat_template():
    tokenizer = tiny_tokenizer(chat_template=None)
    shots = [("What is the capital of Japan?", "Tokyo", "Tokyo is the capital of Japan.")]
    prompt = qa.build_prompt(tokenizer, "What is the capital of France?", few_shot=shots)
    assert prompt == (
        "Answer the question with a single word or short phrase.\nQuestion: What is the capital of Japan?\n"
        "Answer: Tokyo\n\n"
        "Answer the question with a single word or short phrase.\nQuestion: What is the capital of France?\n"
        "Answer:"
    )
    custom = qa.build_prompt(tokenizer, "2+2?", evidence="It is 4.", template="{evidence} | {question}")
    assert custom == "It is 4. | 2+2?\nAnswer:"
    # a chat-capable tokenizer can be asked for the plain format
    assert qa.build_prompt(tiny_tokenizer(), "Q?", use_chat_template=False) == qa.build_prompt(tokenizer, "Q?")


def test_build_prompt_errors():
    tokenizer = tiny_tokenizer()
    with pytest.raises(ValueError, match=r"\{evidence\}"):
        qa.build_prompt(tokenizer, "Q?", evidence="E.", template="Question: {question}")
    with pytest.raises(ValueError, match="has no evidence"):
        qa.build_prompt(tokenizer, "Q?", evidence="E.", few_shot=[("Q1?", "A1")])


# ---------------------------------------------------------------------------------------------------------------
# Generation on a tiny config-built Llama

PROMPTS = [
    "what is the capital of france",
    "how many legs does a spider have ? answer with a single word or short phrase",
    "red",
    "one two three four five six seven",
    "what is the capital of japan ? answer",
]


@pytest.fixture
def one_thread():
    # A 2-layer model gains nothing from threads, and on a shared 2-core machine they make generate() 10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_generate_answers_shapes_order_and_determinism(one_thread):
    model, tokenizer = tiny_llama(seed=0), tiny_tokenizer()
    model.train()
    first = qa.generate_answers(model, tokenizer, PROMPTS, batch_size=2, max_new_tokens=6)
    assert model.training  # the previous mode is restored
    assert len(first) == len(PROMPTS) and all(isinstance(text, str) for text in first)
    assert all(len(tokenizer(text, add_special_tokens=False).input_ids) <= 6 for text in first)
    assert qa.generate_answers(model, tokenizer, PROMPTS, batch_size=2, max_new_tokens=6) == first
    # left padding: each answer is the same whatever else is in its batch, and matches generating it alone
    assert qa.generate_answers(model, tokenizer, PROMPTS, batch_size=len(PROMPTS), max_new_tokens=6) == first
    assert qa.generate_answers(model, tokenizer, PROMPTS, batch_size=1, max_new_tokens=6) == first  # each alone
    # the continuation only: the prompt's words are not echoed back
    reversed_answers = qa.generate_answers(model, tokenizer, PROMPTS[::-1], batch_size=3, max_new_tokens=6)
    assert reversed_answers == first[::-1]


def test_generate_answers_matches_a_manual_greedy_loop(one_thread):
    model, tokenizer = tiny_llama(seed=1), tiny_tokenizer()
    prompt = PROMPTS[1]
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        for _ in range(5):
            next_id = model(ids).logits[0, -1].argmax()
            ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
            if next_id.item() == tokenizer.eos_token_id:
                break
    expected = tokenizer.decode(ids[0, len(tokenizer(prompt).input_ids) :], skip_special_tokens=True)
    batch = [PROMPTS[3], prompt, PROMPTS[0]]  # shorter and longer neighbours force padding
    assert qa.generate_answers(model, tokenizer, batch, batch_size=3, max_new_tokens=5)[1] == expected


def test_first_line_stopping_criterion(one_thread):
    class Decoder:  # stands in for a tokenizer: each row's continuation so far
        texts = ["\n\n", " Paris\n", "Mars", "\n Tokyo.\nmore"]

        def batch_decode(self, ids, skip_special_tokens=True):
            assert ids.shape[1] == 2  # the prompt (3 columns) is cut off
            return self.texts

    criterion = qa._FirstLineDone(Decoder(), prompt_width=3)
    assert criterion(torch.zeros(4, 5, dtype=torch.long), None).tolist() == [False, True, False, True]
    # with the tiny model (whose tokenizer has no line breaks) the criterion runs and changes nothing
    model, tokenizer = tiny_llama(seed=2), tiny_tokenizer()
    plain = qa.generate_answers(model, tokenizer, PROMPTS, batch_size=2, max_new_tokens=4)
    assert qa.generate_answers(model, tokenizer, PROMPTS, batch_size=2, max_new_tokens=4, stop_at_first_line=True) == (
        plain
    )


def test_generate_answers_input_errors(one_thread):
    model, tokenizer = tiny_llama(), tiny_tokenizer()
    assert qa.generate_answers(model, tokenizer, [], batch_size=4, max_new_tokens=4) == []
    with pytest.raises(TypeError, match="single string"):
        qa.generate_answers(model, tokenizer, "what is red", batch_size=4, max_new_tokens=4)
    with pytest.raises(ValueError, match="must be >= 1"):
        qa.generate_answers(model, tokenizer, ["red"], batch_size=0, max_new_tokens=4)


# ---------------------------------------------------------------------------------------------------------------
# The real SmolLM2-135M-Instruct on the shipped sample


@pytest.mark.slow
def test_smollm2_open_book_beats_closed_book_on_the_sample():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_junkdna.offline import smollm2_path

    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    # Plain "Question: ... Answer:" prompts with one worked example: inside its chat template this 135M model
    # answers in full sentences (dense EM on all 256 questions: 0.03 closed / 0.12 open, against 0.47 / 0.76 here).
    questions = qa.load_triviaqa_sample("validation")[:64]
    shots = qa.load_triviaqa_sample("train")[:1]
    scores = {}
    start = time.perf_counter()
    for setting in ("closed_book", "open_book"):
        prompts = [
            qa.build_prompt(
                tokenizer,
                record["question"],
                evidence=record["evidence"] if setting == "open_book" else None,
                few_shot=shots,
                use_chat_template=False,
            )
            for record in questions
        ]
        outputs = qa.generate_answers(
            model, tokenizer, prompts, batch_size=16, max_new_tokens=8, stop_at_first_line=True
        )
        predictions = [qa.extract_answer(text) for text in outputs]
        scores[setting] = qa.score_predictions(predictions, [record["answer"] for record in questions])
    print(json.dumps({"seconds": round(time.perf_counter() - start, 1), **scores}))
    assert scores["open_book"]["exact_match"] > scores["closed_book"]["exact_match"] > 0.1
