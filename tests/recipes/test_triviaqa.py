import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from unittest.mock import patch

import pytest

from hf_junkdna.experiments.args import ConfigFileError
from hf_junkdna.experiments.store import RECORDS_FILE

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _load_recipe(name: str):
    """Import recipes/<name>.py as a module (recipes/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and HfArgumentParser resolve annotations through it
    spec.loader.exec_module(module)
    return module


triviaqa = _load_recipe("triviaqa")


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def _fast(model, out, *extra):
    """Arguments for a quick sweep on the tiny model: 3 methods x {0, 0.5} x 2 settings."""
    return [
        "triviaqa.py",
        "--model_name_or_path",
        str(model),
        "--num_questions",
        "4",
        "--num_calibration_samples",
        "2",
        "--calibration_max_length",
        "16",
        "--max_new_tokens",
        "3",
        "--batch_size",
        "3",
        "--sparsities",
        "0",
        "0.5",
        "--output_dir",
        str(out),
        *extra,
    ]


def test_help_lists_the_options(capsys):
    with patch.object(sys, "argv", ["triviaqa.py", "--help"]), pytest.raises(SystemExit) as exit_info:
        triviaqa.main()
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for option in ("--model_name_or_path", "--num_questions", "--methods", "--do_train", "--push_to_hub", "--config"):
        assert option in text
    assert "0.99 = 99%" in text  # '%%' in help strings renders as '%'
    assert "accelerate launch recipes/triviaqa.py" in text  # the docstring with the launch command


def test_recipe_runs_in_process_and_resumes(tiny_qa_model, qa_file, tmp_path, capsys):
    out = tmp_path / "run"
    argv = _fast(tiny_qa_model, out, "--dataset_name", str(qa_file))
    with patch.object(sys, "argv", argv):
        summary = triviaqa.main()
    for name in ("all_results.json", "results.md", triviaqa.FIGURE, "sweep.json", RECORDS_FILE):
        assert (out / name).is_file(), name
    assert (out / triviaqa.FIGURE).read_bytes()[:4] == b"\x89PNG"
    results = json.loads((out / "all_results.json").read_text())
    assert results["run"]["num_questions"] == 4 and results["run"]["cells_evaluated_now"] == 2 + 3 * 2
    assert set(summary["groups"]) == {"magnitude", "wanda", "sparsegpt"}
    assert summary["settings"] == ["open_book", "closed_book"]
    assert "tolerance_sparsegpt_closed_book" in results
    assert "| magnitude | 0.50 |" in capsys.readouterr().out  # the printed table
    assert len(list((out / "predictions").glob("*.jsonl"))) == 8
    assert (out / "results.md").read_text().startswith("| method | sparsity | open-book")

    with patch.object(sys, "argv", argv):  # a second run finds every cell finished
        again = triviaqa.main()
    assert json.loads((out / "all_results.json").read_text())["run"]["cells_evaluated_now"] == 0
    assert again["groups"] == summary["groups"]


def test_config_file_and_command_line_override(tiny_qa_model, qa_file, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_qa_model}\ndataset_name: {qa_file}\nnum_questions: 2\nmethods: [magnitude]\n"
        f"sparsities: [0.0, 0.3]\nsettings: [closed_book]\nmax_new_tokens: 2\noutput_dir: {tmp_path / 'from_yaml'}\n"
    )
    with patch.object(sys, "argv", ["triviaqa.py", "--config", str(config), "--num_questions", "3"]):
        summary = triviaqa.main()
    results = json.loads((tmp_path / "from_yaml" / "all_results.json").read_text())
    assert results["run"]["num_questions"] == 3  # the command line wins over the file
    assert summary["settings"] == ["closed_book"] and list(summary["groups"]) == ["magnitude"]


def test_shipped_configs_parse_and_the_default_one_is_the_builtin_default():
    from hf_junkdna.experiments.args import parse_args

    default = parse_args(triviaqa.ARGUMENT_TYPES, ["--config", str(RECIPES / "configs" / "triviaqa_default.yaml")])
    assert default == parse_args(triviaqa.ARGUMENT_TYPES, [])
    model_args, data_args, *_ = parse_args(
        triviaqa.ARGUMENT_TYPES, ["--config", str(RECIPES / "configs" / "triviaqa_vicuna7b.yaml")]
    )
    assert model_args.model_name_or_path == "lmsys/vicuna-7b-v1.5"
    assert (data_args.dataset_name, data_args.dataset_config_name) == ("mandarjoshi/trivia_qa", "rc")


def test_triviaqa_rc_rows_map_onto_the_sample_schema():
    row = {
        "question_id": "tc_1",
        "question": "Which planet is red?",
        "answer": {"value": "Mars", "aliases": ["Mars"], "normalized_value": "mars", "normalized_aliases": ["mars"]},
        "entity_pages": {"wiki_context": ["Mars is the fourth planet. It is often called the Red Planet."]},
        "search_results": {"search_context": []},
    }
    record = triviaqa._map_row(row, triviaqa.DataArguments())
    assert record["evidence"].startswith("Mars is the fourth planet") and record["answer"]["aliases"] == ["Mars"]


def _bad_input_cases(tiny_qa_model, tiny_model_without_tokenizer, qa_records, tmp_path):
    no_columns = write_jsonl(tmp_path / "no_columns.jsonl", [{"query": "q?", "target": "a", "split": "validation"}])
    empty = write_jsonl(tmp_path / "empty.jsonl", [r for r in qa_records if r["split"] == "train"])
    qa = write_jsonl(tmp_path / "qa.jsonl", qa_records)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("num_question: 3\nmethods: [magnitude]\n")
    return {
        "dataset without the expected columns": (
            ["--model_name_or_path", str(tiny_qa_model), "--dataset_name", str(no_columns)],
            ValueError,
            r"missing column\(s\) \['question', 'answer', 'evidence'\]",
        ),
        "model without a tokenizer": (
            ["--model_name_or_path", str(tiny_model_without_tokenizer), "--dataset_name", str(qa)],
            ValueError,
            "cannot load a tokenizer.*--tokenizer_name",
        ),
        "sparsity 1.0": (
            ["--model_name_or_path", str(tiny_qa_model), "--dataset_name", str(qa), "--sparsities", "0", "1.0"],
            ValueError,
            r"1\.0 is outside \[0, 1\)",
        ),
        "empty question set": (
            ["--model_name_or_path", str(tiny_qa_model), "--dataset_name", str(empty)],
            ValueError,
            "question set is empty",
        ),
        "config file with an unknown key": (
            ["--config", str(unknown)],
            ConfigFileError,
            "unknown key.*'num_question' \\(did you mean 'num_questions'\\?\\)",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "dataset without the expected columns",
        "model without a tokenizer",
        "sparsity 1.0",
        "empty question set",
        "config file with an unknown key",
    ],
)
def test_bad_input_is_a_clear_error_and_marks_nothing_finished(
    case, tiny_qa_model, tiny_model_without_tokenizer, qa_records, tmp_path
):
    cases = _bad_input_cases(tiny_qa_model, tiny_model_without_tokenizer, qa_records, tmp_path)
    extra, error, message = cases[case]
    out = tmp_path / "out"
    with patch.object(sys, "argv", ["triviaqa.py", "--output_dir", str(out), *extra]):
        with pytest.raises(error, match=message):
            triviaqa.main()
    assert not out.exists()  # no store, no records, no results


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(processes: int, model: Path, data: Path, out: Path) -> dict:
    accelerate = Path(sys.executable).parent / "accelerate"
    launcher = [str(accelerate), "launch", "--num_processes", str(processes), "--main_process_port", str(_free_port())]
    if processes > 1:
        launcher.insert(2, "--multi_gpu")  # the multi-process launcher; `--cpu` would run a single process
    argv = _fast(model, out, "--dataset_name", str(data), "--methods", "magnitude", "wanda", "--num_questions", "5")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*launcher, str(RECIPES / "triviaqa.py"), *argv[1:]], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "all_results.json").read_text())


@pytest.mark.distributed
def test_two_processes_give_the_same_scores_as_one(tiny_qa_model, qa_file, tmp_path):
    single = _launch(1, tiny_qa_model, qa_file, tmp_path / "one")
    double = _launch(2, tiny_qa_model, qa_file, tmp_path / "two")
    assert single["run"]["num_processes"] == 1 and double["run"]["num_processes"] == 2
    assert double["summary"] == single["summary"]
    for path in sorted((tmp_path / "one" / "predictions").glob("*.jsonl")):
        assert (tmp_path / "two" / "predictions" / path.name).read_text() == path.read_text(), path.name
    cells = [json.loads(line) for line in (tmp_path / "two" / RECORDS_FILE).read_text().splitlines()]
    assert len(cells) == 2 + 2 * 2  # written once, by the main process only


# ------------------------------------------------------------------------------------------------ --do_train
def test_do_train_fine_tunes_every_level_under_the_regime(tiny_qa_model, qa_file, tmp_path, monkeypatch):
    import torch

    SparseTrainer, SparseTrainingArguments = triviaqa._training_api()
    runs = []

    class SpyTrainer(SparseTrainer):
        def train(self, *args, **kwargs):
            before = {n: p.detach().clone() for n, p in self.model.named_parameters() if "layers" in n}
            result = super().train(*args, **kwargs)
            moved = any(not torch.equal(p, before[n]) for n, p in self.model.named_parameters() if n in before)
            pruned_stay_zero = self.masks is None or all(
                not self.model.get_parameter(name)[~keep].any() for name, keep in self.masks.items()
            )
            runs.append((self.regime, moved, pruned_stay_zero))
            return result

    monkeypatch.setattr(triviaqa, "_training_api", lambda: (SpyTrainer, SparseTrainingArguments))
    out = tmp_path / "trained"
    argv = _fast(tiny_qa_model, out, "--dataset_name", str(qa_file), "--methods", "magnitude", "--do_train")
    argv += ["--settings", "closed_book", "--per_device_train_batch_size", "2", "--learning_rate", "1e-2"]
    with patch.object(sys, "argv", argv):
        triviaqa.main()
    assert runs == [("dense", True, True), ("sparse", True, True)]  # the dense reference is fine-tuned too
    config = json.loads((out / "sweep.json").read_text())["config"]
    assert config["do_train"] is True and config["regime"] == "sparse"  # training settings are in the fingerprint


def test_freeze_regime_refuses_methods_that_write_weights(tiny_qa_model, qa_file, tmp_path):
    argv = _fast(tiny_qa_model, tmp_path / "out", "--dataset_name", str(qa_file), "--do_train", "--regime", "freeze")
    with patch.object(sys, "argv", argv), pytest.raises(ValueError, match="--regime freeze.*sparsegpt"):
        triviaqa.main()
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ --push_to_hub
@pytest.fixture
def hub_endpoint(tmp_path):
    """tests/hub/hub_server.py on a free port (the Hub tests' server), stopped by its PID afterwards."""
    import time

    port_file = tmp_path / "hub.port"
    server = Path(__file__).resolve().parents[1] / "hub" / "hub_server.py"
    command = [sys.executable, str(server), "--port", "0", "--root", str(tmp_path / "hub_root")]
    process = subprocess.Popen([*command, "--port-file", str(port_file), "--user", "testuser"])
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert process.poll() is None and time.monotonic() < deadline, "the Hub test server did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{int(port_file.read_text())}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_push_to_hub_sends_one_checkpoint_per_method(tiny_qa_model, qa_file, tmp_path, hub_endpoint):
    import urllib.request

    env = {
        **os.environ,
        "HF_ENDPOINT": hub_endpoint,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_TOKEN": "hf_testtoken_recipe",
        "HF_HUB_OFFLINE": "0",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    argv = _fast(tiny_qa_model, tmp_path / "out", "--dataset_name", str(qa_file), "--methods", "magnitude", "wanda")
    argv += ["--num_questions", "2", "--push_to_hub", "--hub_model_id", "testuser/tiny-tqa"]
    result = subprocess.run(
        [sys.executable, str(RECIPES / "triviaqa.py"), *argv[1:]], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for repo in ("testuser/tiny-tqa-magnitude-unstructured-s50", "testuser/tiny-tqa-wanda-unstructured-s50"):
        with opener.open(f"{hub_endpoint}/api/models/{repo}/tree/main?recursive=true") as response:
            files = {entry["path"] for entry in json.loads(response.read())}
        assert {"config.json", "README.md", "sparsity_masks.safetensors", "sparsity_results.json"} <= files, files
        with opener.open(f"{hub_endpoint}/{repo}/resolve/main/sparsity_results.json") as response:
            text = response.read().decode()
        assert "closed-book" in text and "open-book" in text


def test_seed_is_in_the_fingerprint_when_fine_tuning():
    from hf_junkdna.experiments.args import parse_args
    from hf_junkdna.experiments.store import config_fingerprint

    def fingerprint(*argv):
        return config_fingerprint(triviaqa.store_config(*parse_args(triviaqa.ARGUMENT_TYPES, list(argv))))

    assert fingerprint("--do_train") != fingerprint("--do_train", "--seed", "7")  # trained cells depend on it
    assert fingerprint() == fingerprint("--seed", "7")  # greedy decoding without training does not


@pytest.mark.parametrize(
    "text, message",
    [
        ("use_chat_template: yes\n", r"use_chat_template: got the boolean True.*quote"),
        ("torch_dtype: float64\n", r"torch_dtype: 'float64' is not one of"),
        ("num_questions: 2.5\n", r"num_questions: 2.5 is not a valid int"),
        ("threshold: abc\n", r"threshold: 'abc' is not a valid float"),
        ("do_train: maybe\n", r"do_train: 'maybe' is not a valid boolean"),
        ("sparsities: [0.1, oops]\n", r"sparsities: 'oops' is not a valid float"),
        ("methods: []\n", r"methods: an empty list"),
        ("methods: {magnitude: 1}\n", r"methods: expected a single value"),
        ("num_questions: [3]\n", r"num_questions: expected a single value"),
        ("num_questions: null\n", r"num_questions: null"),
    ],
)
def test_config_file_values_are_checked_like_the_command_line(tmp_path, text, message):
    from hf_junkdna.experiments.args import parse_args

    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(ConfigFileError, match=rf"--config '{config}': {message}"):
        parse_args(triviaqa.ARGUMENT_TYPES, ["--config", str(config)])


def test_config_file_values_are_converted_like_the_command_line(tmp_path):
    from hf_junkdna.experiments.args import parse_args

    config = tmp_path / "ok.yaml"
    config.write_text(
        "methods: magnitude\nsparsities: 0.5\nsettings: [closed_book]\nnum_questions: '7'\ndo_train: 'no'\n"
        "use_chat_template: 'yes'\nlearning_rate: 1e-5\ntokenizer_name: null\nthreshold: 1\n"
    )
    _, data_args, prompt_args, sweep_args, train_args = parse_args(triviaqa.ARGUMENT_TYPES, ["--config", str(config)])
    assert sweep_args.methods == ["magnitude"] and sweep_args.sparsities == [0.5]  # a single value: a 1-item list
    assert sweep_args.settings == ["closed_book"] and sweep_args.threshold == 1.0
    assert data_args.num_questions == 7 and train_args.do_train is False and prompt_args.use_chat_template == "yes"
    assert train_args.learning_rate == 1e-5  # YAML 1.1 reads 1e-5 as a string; float() takes it, as argparse does


def _hub_rows(split, count):
    """TriviaQA rc rows, every other one without documents (no evidence passage)."""
    return [
        {
            "question_id": f"{split}{index}",
            "question": f"Question {index}?",
            "answer": {"value": f"A{index}", "aliases": [f"A{index}"]},
            "entity_pages": {"wiki_context": [] if index % 2 == 0 else [f"The answer is A{index}."]},
            "search_results": {"search_context": []},
        }
        for index in range(count)
    ]


def test_resume_refuses_cells_scored_on_other_questions(tiny_qa_model, tmp_path, monkeypatch):
    import datasets

    from hf_junkdna.experiments.store import StoreMismatchError

    def load_dataset(name, config=None, split=None, streaming=False):
        assert streaming
        return iter(_hub_rows(split, 12))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    out = tmp_path / "hub"
    argv = _fast(tiny_qa_model, out, "--dataset_name", "mandarjoshi/trivia_qa", "--methods", "magnitude")
    argv += ["--num_questions", "3"]
    with patch.object(sys, "argv", [*argv, "--settings", "closed_book"]):
        triviaqa.main()
    # more sparsities on the same questions: the finished cells are reused
    with patch.object(sys, "argv", [*argv, "--settings", "closed_book", "--sparsities", "0", "0.3", "0.5"]):
        triviaqa.main()
    assert json.loads((out / "all_results.json").read_text())["run"]["cells_evaluated_now"] == 1
    # with open_book, rows without evidence are skipped: other questions, so no closed-book cell may be reused
    with patch.object(sys, "argv", [*argv, "--settings", "open_book", "closed_book"]):
        with pytest.raises(StoreMismatchError, match="different configuration.*eval_questions"):
            triviaqa.main()
    assert json.loads((out / "sweep.json").read_text())["config"]["eval_questions"]["count"] == 3


def test_a_file_without_split_column_never_shows_evaluated_questions_as_examples(tmp_path, qa_records):
    from hf_junkdna.experiments.args import parse_args

    for record in qa_records:
        del record["split"]
    data = write_jsonl(tmp_path / "no_split.jsonl", qa_records)
    _, data_args, *_ = parse_args(triviaqa.ARGUMENT_TYPES, ["--dataset_name", str(data), "--num_questions", "5"])
    evaluated = triviaqa.load_records(data_args, data_args.eval_split, data_args.num_questions)
    train = triviaqa.load_records(data_args, data_args.train_split, 512)
    assert [r["question_id"] for r in evaluated] == ["t0", "t1", "t2", "t3", "t4"]  # the first --num_questions rows
    assert [r["question_id"] for r in train] == ["t5", "t6", "t7"]  # the rest, disjoint
    data_args.num_questions = 8  # nothing left to train on: an error, never the evaluated questions
    with pytest.raises(ValueError, match=r"no_split.jsonl.*no 'split' column.*leaves no train rows"):
        triviaqa.load_records(data_args, data_args.train_split, 512)
    data_args.num_questions, data_args.eval_split = 5, "test"  # a split name cannot select rows without the column
    with pytest.raises(ValueError, match=r"no_split.jsonl.*no 'split' column.*--eval_split 'test'"):
        triviaqa.load_records(data_args, data_args.eval_split, 5)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--eval_split", "typo_split"], r"--eval_split 'typo_split' matches no rows of '.*qa.jsonl'"),
        (["--few_shot", "1", "--train_split", "validation"], "--eval_split and --train_split are both 'validation'"),
    ],
)
def test_split_errors_name_the_split_and_the_file(tiny_qa_model, qa_file, tmp_path, extra, message):
    out = tmp_path / "out"
    argv = ["triviaqa.py", "--model_name_or_path", str(tiny_qa_model), "--dataset_name", str(qa_file)]
    with patch.object(sys, "argv", [*argv, "--output_dir", str(out), "--methods", "magnitude", *extra]):
        with pytest.raises(ValueError, match=message):
            triviaqa.main()
    assert not out.exists()


def test_do_train_reads_a_bounded_part_of_a_streamed_train_split(tiny_qa_model, tmp_path, monkeypatch):
    import itertools

    import datasets

    read = {"train": 0}

    def stream(split):
        for index in itertools.count():  # a split far larger than anything a run should read
            assert index < 5000, f"streamed {index} rows of the {split} split"
            read[split] = index + 1
            yield {**_hub_rows(split, 2)[1], "question_id": f"{split}{index}", "question": f"Question {index}?"}

    monkeypatch.setattr(datasets, "load_dataset", lambda name, config=None, split=None, streaming=False: stream(split))
    monkeypatch.setattr(triviaqa, "make_trainer_hook", lambda *args: lambda model, masks, cell: None)
    argv = _fast(tiny_qa_model, tmp_path / "out", "--dataset_name", "mandarjoshi/trivia_qa", "--methods", "magnitude")
    with patch.object(sys, "argv", [*argv, "--settings", "closed_book", "--num_questions", "2", "--do_train"]):
        triviaqa.main()
    assert read["train"] == triviaqa.TrainHubArguments().max_train_samples == 1000
    assert "default 1000" in triviaqa.TrainHubArguments.__dataclass_fields__["max_train_samples"].metadata["help"]
