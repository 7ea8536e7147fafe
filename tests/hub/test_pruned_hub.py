"""push_pruned_to_hub / load_pruned through the real huggingface_hub and transformers clients and the test server."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, hf_hub_download
from tiny_models import tiny_llama
from transformers import AutoModelForCausalLM

from hf_junkdna import MaskMismatchError, SparsityConfig, prune
from hf_junkdna.hub import (
    MASKS_NAME,
    SPARSITY_CONFIG_NAME,
    CheckpointNotFoundError,
    HubPushError,
    RevisionNotFoundError,
    load_pruned,
    push_pruned_to_hub,
)
from hf_junkdna.hub.trainer_integration import default_command

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
RESULTS = [
    {"sparsity": 0.0, "score": 0.80, "metric": "accuracy", "setting": "25% data", "difficulty": 0.25},
    {"sparsity": 0.3, "score": 0.80, "metric": "accuracy", "setting": "25% data", "difficulty": 0.25},
    {"sparsity": 0.5, "score": 0.76, "metric": "accuracy", "setting": "25% data", "difficulty": 0.25},
]


def pruned_llama(seed=0):
    model = tiny_llama(seed=seed)
    return model, prune(model, SparsityConfig(sparsity=0.5))


def pruned_llama_of_width(hidden, intermediate):
    model = tiny_llama(hidden=hidden, intermediate=intermediate)
    return model, prune(model, SparsityConfig(sparsity=0.5))


def same_weights(expected, actual) -> bool:
    a, b = expected.state_dict(), actual.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def writes(requests, marker):
    return [r for r in requests if r["method"] in ("PUT", "POST") and marker in r["path"]]


def hub_writes(requests):
    """Requests that could change the server's state (the read-only whoami and tree listings excluded)."""
    return [r for r in requests if r["method"] not in ("GET", "HEAD")]


def test_push_list_download_load_and_unchanged_repush(hub_env, hub_repo_id):
    api, server = HfApi(), hub_env.server
    model, masks = pruned_llama()
    kwargs = dict(results=RESULTS, task="sst2", difficulty={"measure": "training data fraction", "value": 0.25},
                  command="python recipes/glue.py --sparsity 0.5", base_model=BASE)  # fmt: skip
    info = push_pruned_to_hub(model, hub_repo_id, masks, **kwargs)
    files = set(api.list_repo_files(hub_repo_id))
    assert {"config.json", "model.safetensors", MASKS_NAME, SPARSITY_CONFIG_NAME, "README.md"} <= files
    assert {"sparsity_curve.png", "sparsity_results.json"} <= files
    assert len(writes(server.requests(), "/commit/")) == 1  # one commit for the whole checkpoint
    assert hub_repo_id in [m.id for m in api.list_models(author=server.user, search=hub_repo_id)]

    record = json.loads(Path(hf_hub_download(hub_repo_id, SPARSITY_CONFIG_NAME)).read_text())
    assert record["regime"] == "sparse" and record["sparsity"] == pytest.approx(0.5)
    assert AutoModelForCausalLM.from_pretrained(hub_repo_id).state_dict().keys() == model.state_dict().keys()
    assert same_weights(model, AutoModelForCausalLM.from_pretrained(hub_repo_id))
    loaded, loaded_masks = load_pruned(hub_repo_id)
    assert same_weights(model, loaded) and loaded_masks == masks

    card = ModelCard.load(hub_repo_id)
    assert card.data.base_model == BASE and card.data.library_name == "transformers"
    assert {"hf_junkdna", "sparse", "pruned", "magnitude"} <= set(card.data.tags)
    (result,) = card.data.eval_results  # the point at this model's sparsity, not the whole sweep
    assert (result.metric_type, result.metric_value, result.dataset_type) == ("accuracy", 0.76, "sst2")
    assert card.data.to_dict()["model-index"][0]["name"] == hub_repo_id
    assert "30.0 %" in card.text and "0.99" in card.text  # tolerance with its threshold

    commits = len(api.list_repo_commits(hub_repo_id))
    server.reset()
    again = push_pruned_to_hub(model, hub_repo_id, masks, **kwargs)
    requests = server.requests()
    assert not [r for r in requests if r["method"] == "PUT"] and not writes(requests, "/commit/")
    assert again.oid == info.oid and len(api.list_repo_commits(hub_repo_id)) == commits


def test_revisions_stale_files_and_compressed_on_the_hub(hub_env, hub_repo_id):
    api = HfApi()
    model, masks = pruned_llama()
    push_pruned_to_hub(model, hub_repo_id, masks)
    # A second version on a new branch, compressed and sharded: main is untouched.
    push_pruned_to_hub(model, hub_repo_id, masks, revision="compressed", compressed=True, max_shard_size="20KB")
    on_branch = set(api.list_repo_files(hub_repo_id, revision="compressed"))
    assert "model.safetensors.index.json" in on_branch
    assert "model.safetensors" not in on_branch  # the old single file is deleted, not left to shadow the shards
    assert "model.safetensors" in api.list_repo_files(hub_repo_id)
    loaded, loaded_masks = load_pruned(hub_repo_id, revision="compressed")
    assert same_weights(model, loaded) and loaded_masks == masks

    with pytest.raises(RevisionNotFoundError, match="no revision 'no-such-branch'"):
        load_pruned(hub_repo_id, revision="no-such-branch")
    with pytest.raises(CheckpointNotFoundError, match="no such model repo"):
        load_pruned(hub_repo_id + "-missing")


def test_server_failure_during_push_then_retry(hub_env, hub_repo_id, tmp_path):
    api, server = HfApi(), hub_env.server
    model, masks = pruned_llama()
    before = {name: t.clone() for name, t in model.state_dict().items()}
    api.create_repo(hub_repo_id)

    server.fail_next(r"/commit/main", status=500, method="POST")
    with pytest.raises(HubPushError, match="500") as error:
        push_pruned_to_hub(model, hub_repo_id, masks)
    assert error.value.status_code == 500 and "push again" in str(error.value)
    assert api.list_repo_files(hub_repo_id) == [".gitattributes"]  # no partial commit
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())

    # A 500 on an LFS object upload (of new objects: the failed push above already stored the first model's) is
    # retried by huggingface_hub itself (its http_backoff retries 5xx on PUT), so the push succeeds.
    other, other_masks = pruned_llama(seed=1)
    server.reset()
    server.fail_next(r"/_lfs/upload/", status=500, method="PUT")
    push_pruned_to_hub(other, hub_repo_id, other_masks)
    requests = server.requests()
    (failed,) = [i for i, r in enumerate(requests) if r.get("injected")]
    assert requests[failed]["method"] == "PUT" and requests[failed]["status"] == 500
    retries = [i for i, r in enumerate(requests) if i > failed and r["path"] == requests[failed]["path"]]
    assert retries and requests[retries[0]]["method"] == "PUT" and requests[retries[0]]["status"] == 200
    (commit,) = [i for i, r in enumerate(requests) if r["method"] == "POST" and "/commit/main" in r["path"]]
    assert commit > retries[0] and requests[commit]["status"] == 200  # committed after the retried upload
    loaded, loaded_masks = load_pruned(hub_repo_id)
    assert same_weights(other, loaded) and loaded_masks == other_masks

    server.reset()
    push_pruned_to_hub(other, hub_repo_id, other_masks)  # pushing the same model again changes nothing
    assert not writes(server.requests(), "/commit/") and not writes(server.requests(), "/_lfs/")


def test_refused_push_leaves_nothing_on_the_hub(hub_env, hub_repo_id):
    api, server = HfApi(), hub_env.server
    model, masks = pruned_llama()
    _, wide_masks = pruned_llama_of_width(hidden=64, intermediate=128)
    with pytest.raises(MaskMismatchError, match="shape"):
        push_pruned_to_hub(model, hub_repo_id, wide_masks)
    assert hub_writes(server.requests()) == []  # no create call: the mask was checked first
    assert not api.repo_exists(hub_repo_id)
    assert hub_repo_id not in [m.id for m in api.list_models(author=server.user)]

    # On an existing repo, a regime the weights break on a new branch: the branch is not created either.
    push_pruned_to_hub(model, hub_repo_id, masks)
    server.reset()
    unpruned = tiny_llama(seed=1)  # same shapes, pruned weights non-zero
    with pytest.raises(ValueError, match="regime='sparse'.*non-zero"):
        push_pruned_to_hub(unpruned, hub_repo_id, masks, revision="v2", regime="sparse")
    assert hub_writes(server.requests()) == []
    assert [branch.name for branch in api.list_repo_refs(hub_repo_id).branches] == ["main"]


def test_token_is_never_written_logged_or_raised(hub_env, hub_repo_id, caplog, capfd):
    token = hub_env.token
    caplog.set_level(logging.DEBUG)
    for name in ("huggingface_hub", "hf_junkdna", "transformers"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    messages = []
    model, masks = pruned_llama()
    push_pruned_to_hub(model, hub_repo_id, masks, token=token, results=RESULTS,
                       command=f"python train.py --hub_token {token} --push_to_hub")  # fmt: skip
    load_pruned(hub_repo_id, token=token)
    hub_env.server.fail_next(r"/commit/main", status=500, method="POST")
    other, other_masks = pruned_llama(seed=1)
    with pytest.raises(HubPushError) as push_error:
        push_pruned_to_hub(other, hub_repo_id, other_masks, token=token)
    with pytest.raises(CheckpointNotFoundError) as missing:
        load_pruned(hub_repo_id + "-missing", token=token)
    with pytest.raises(RevisionNotFoundError) as revision:
        load_pruned(hub_repo_id, revision="nope", token=token)
    with pytest.raises(HubPushError, match="refusing to upload README.md: it contains the access token") as leak:
        push_pruned_to_hub(model, hub_repo_id, masks, token=token, task=f"pasted {token} by mistake")
    for error in (push_error.value, missing.value, revision.value, leak.value):
        while error is not None:
            messages.append(f"{type(error).__name__}: {error} {error.args!r}")
            error = error.__cause__ or error.__context__

    card = ModelCard.load(hub_repo_id, token=token)
    assert "<redacted>" in card.text and "--push_to_hub" in card.text
    captured = capfd.readouterr()
    assert token not in caplog.text and token not in captured.out and token not in captured.err
    assert all(token not in message for message in messages)
    needle = token.encode()
    for base in (hub_env.server.root, hub_env.hf_home):
        for path in base.rglob("*"):
            if path.is_file():
                assert needle not in path.read_bytes(), path
    assert any(r["headers"].get("authorization") == f"Bearer {token}" for r in hub_env.server.requests())


def test_logged_in_token_is_redacted_too(hub_env, hub_repo_id, monkeypatch):
    """The token may come from `hf auth login` (the token file) rather than the argument or HF_TOKEN: the push
    still uses it, so it is kept out of the files just the same."""
    token = hub_env.token
    monkeypatch.delenv("HF_TOKEN")
    (hub_env.hf_home / "token").write_text(token + "\n")
    model, masks = pruned_llama()
    push_pruned_to_hub(model, hub_repo_id, masks, command=f"python train.py --api_key={token}")
    card = ModelCard.load(hub_repo_id)
    assert token not in card.text and "--api_key=<redacted>" in card.text
    with pytest.raises(HubPushError, match="refusing to upload README.md: it contains the access token"):
        push_pruned_to_hub(model, hub_repo_id, masks, task=f"pasted {token} by mistake")


def test_default_command_redacts_secret_options():
    argv = ["train.py", "--hub_token", "hf_secret", "--api-key=abc", "--lr", "1e-4", "--token", "x"]
    assert default_command(argv) == (
        "python train.py --hub_token '<redacted>' '--api-key=<redacted>' --lr 1e-4 --token '<redacted>'"
    )


def test_sparse_trainer_pushes_through_push_trainer_to_hub(hub_env, hub_repo_id, tmp_path):
    from transformers import TrainingArguments

    from hf_junkdna.training import SparseTrainer

    model, masks = pruned_llama()
    args = TrainingArguments(output_dir=str(tmp_path / "run"), hub_model_id=hub_repo_id, report_to=[],
                             use_cpu=True, save_strategy="no")  # fmt: skip
    trainer = SparseTrainer(model=model, args=args, masks=masks)
    trainer.push_to_hub(results=RESULTS, task="sst2", command="python run.py")  # delegates to push_trainer_to_hub
    loaded, loaded_masks = load_pruned(hub_repo_id)
    assert same_weights(model, loaded) and loaded_masks == masks
    assert loaded_masks.metadata["regime"] == "sparse"
    assert "python run.py" in ModelCard.load(hub_repo_id).text


def test_sparse_trainer_push_takes_trainers_card_arguments(hub_env, hub_repo_id, tmp_path, caplog):
    from transformers import TrainingArguments

    from hf_junkdna.training import SparseTrainer

    model, masks = pruned_llama()
    args = TrainingArguments(output_dir=str(tmp_path / "run"), hub_model_id=hub_repo_id, report_to=[],
                             use_cpu=True, save_strategy="no")  # fmt: skip
    trainer = SparseTrainer(model=model, args=args, masks=masks)
    # The keyword arguments transformers.Trainer.push_to_hub forwards to create_model_card.
    with caplog.at_level(logging.DEBUG, logger="hf_junkdna"):
        trainer.push_to_hub(tags=["x"], finetuned_from="some/base", dataset="sst2", tasks="text-classification",
                            language="en", license="apache-2.0", model_name="tiny-sst2", dataset_args="default")  # fmt: skip
    assert "dataset_args='default' is not used" in caplog.text
    card = ModelCard.load(hub_repo_id)
    assert {"x", "hf_junkdna", "sparse", "pruned", "magnitude"} <= set(card.data.tags)
    assert card.data.base_model == "some/base" and card.data.datasets == ["sst2"]
    assert (card.data.language, card.data.license, card.data.model_name) == ("en", "apache-2.0", "tiny-sst2")
    record = json.loads(Path(hf_hub_download(hub_repo_id, SPARSITY_CONFIG_NAME)).read_text())
    assert record["task"] == "text-classification" and record["base_model"] == "some/base"
    loaded, loaded_masks = load_pruned(hub_repo_id)
    assert same_weights(model, loaded) and loaded_masks == masks


def test_sparse_trainer_push_records_the_trainers_regime_not_the_args_default(hub_env, hub_repo_id, tmp_path):
    from hf_junkdna.training import SparseTrainer, SparseTrainingArguments

    model, masks = pruned_llama()
    args = SparseTrainingArguments(output_dir=str(tmp_path / "run"), hub_model_id=hub_repo_id, report_to=[],
                                   use_cpu=True, save_strategy="no")  # fmt: skip
    assert args.regime == "dense"  # the arguments' default; the keyword below overrides it
    trainer = SparseTrainer(model=model, args=args, masks=masks, regime="sparse")
    trainer.push_to_hub()
    record = json.loads(Path(hf_hub_download(hub_repo_id, SPARSITY_CONFIG_NAME)).read_text())
    assert record["regime"] == "sparse"
    assert load_pruned(hub_repo_id)[1].metadata["regime"] == "sparse"


def test_cli_inspect_of_a_hub_repo_downloads_the_mask_file_only(hub_env, hub_repo_id, capsys):
    from hf_junkdna import cli

    model, masks = pruned_llama()
    push_pruned_to_hub(model, hub_repo_id, masks)
    capsys.readouterr()  # the upload's progress output
    assert cli.main(["inspect", hub_repo_id, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["sparsity"] == pytest.approx(masks.sparsity()) and shown["metadata"]["regime"] == "sparse"
    fetched = {path.name for path in hub_env.hub_cache.rglob("snapshots/*/*")}
    assert fetched == {MASKS_NAME}  # not the weights (14 GB for a 7B repo)
    assert cli.main(["inspect", hub_repo_id + "-missing"]) == 2
    assert "no such model repo" in capsys.readouterr().err


def test_cli_push_failure_is_a_clear_error_not_a_traceback(hub_env, hub_repo_id, tmp_path, capsys):
    from transformers import AutoTokenizer

    from hf_junkdna import cli, offline

    tokenizer = AutoTokenizer.from_pretrained(offline.smollm2_path())
    model = tiny_llama()
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    hub_env.server.fail_next(r"/commit/main", status=500, method="POST")
    argv = ["prune", str(tmp_path / "tiny"), str(tmp_path / "out"), "--push-to-hub", hub_repo_id]
    assert cli.main(argv) == 2
    assert "junkdna prune: error: pushing the pruned model" in capsys.readouterr().err
    assert (tmp_path / "out" / MASKS_NAME).is_file()  # the local result is kept; pushing again retries
    assert cli.main(argv) == 0


def test_card_kwargs_from_trainer_mapping():
    from hf_junkdna.hub.trainer_integration import card_kwargs_from_trainer

    mapped = card_kwargs_from_trainer(
        {"tags": "x", "dataset_tags": ["glue"], "dataset": "GLUE SST-2", "tasks": ["a", "b"], "results": RESULTS},
        model_tags=["x", "from-model"],
    )
    assert mapped == {"tags": ["x", "from-model"], "datasets": ["glue"], "task": "a, b", "results": RESULTS}
    # save_pruned's own names win; anything else is left for save_pruned to reject.
    mapped = card_kwargs_from_trainer({"finetuned_from": "a/b", "base_model": "c/d", "task": "sst2", "tasks": "t"})
    assert mapped == {"base_model": "c/d", "task": "sst2"}
    assert card_kwargs_from_trainer({"datset": "typo"}) == {"datset": "typo"}


def test_push_to_a_repo_name_without_namespace(hub_env, hub_repo_id):
    name = hub_repo_id.split("/")[1]
    model, masks = pruned_llama()
    push_pruned_to_hub(model, name, masks)
    card = ModelCard.load(hub_repo_id)  # created in the user's namespace, and the card names the full id
    assert card.data.model_name == hub_repo_id and f"# {hub_repo_id}\n" in card.text
    assert f'load_pruned("{hub_repo_id}")' in card.text
