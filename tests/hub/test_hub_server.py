"""Smoke tests of the local Hub test server, driven only through the real huggingface_hub and transformers clients."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from huggingface_hub import (
    HfApi,
    HfFileSystem,
    ModelCard,
    ModelCardData,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

BIG = 11 * 1024 * 1024  # over the Hub's 10 MB LFS threshold


def _writes(requests: list[dict], marker: str) -> list[dict]:
    return [r for r in requests if r["method"] in ("PUT", "POST") and marker in r["path"]]


def _make_folder(folder: Path) -> Path:
    (folder / "sub").mkdir(parents=True)
    (folder / "small.txt").write_text("hello hub\n")
    (folder / "sub" / "nested.json").write_text('{"a": 1}\n')
    # Plain text, not an LFS extension: only its size sends it to LFS.
    (folder / "big.dat").write_bytes(b"0123456789abcdef" * (BIG // 16))
    return folder


def test_create_repo_and_exist_ok(hub_env, hub_repo_id):
    api = HfApi()
    url = api.create_repo(hub_repo_id)
    assert url.repo_id == hub_repo_id and url.startswith(hub_env.endpoint)
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(hub_repo_id)
    assert err.value.response.status_code == 409
    assert api.create_repo(hub_repo_id, exist_ok=True).repo_id == hub_repo_id
    assert api.list_repo_files(hub_repo_id) == [".gitattributes"]  # a new repo starts like on the Hub

    # Without a namespace the repo goes to the token's user; private repos need a token.
    name = hub_repo_id.split("/")[1] + "-private"
    private = api.create_repo(name, private=True)
    assert private.repo_id == f"{hub_env.server.user}/{name}"
    assert api.model_info(private.repo_id).private is True
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(private.repo_id, token=False)
    assert hub_repo_id in [m.id for m in api.list_models(author=hub_env.server.user, search=hub_repo_id)]


def test_upload_list_download_and_unchanged_reupload(hub_env, hub_repo_id, tmp_path):
    api, server = HfApi(), hub_env.server
    folder = _make_folder(tmp_path / "folder")
    api.create_repo(hub_repo_id)
    first = api.upload_folder(repo_id=hub_repo_id, folder_path=folder)
    puts = [r for r in server.requests() if r["method"] == "PUT"]
    assert len(puts) == 1 and "/_lfs/upload/" in puts[0]["path"]
    assert "authorization" not in puts[0]["headers"]  # storage URLs never see the token

    assert api.list_repo_files(hub_repo_id) == [".gitattributes", "big.dat", "small.txt", "sub/nested.json"]
    siblings = {s.rfilename: s for s in api.model_info(hub_repo_id, files_metadata=True).siblings}
    assert siblings["big.dat"].lfs is not None and siblings["big.dat"].lfs.size == BIG
    assert siblings["small.txt"].lfs is None and siblings["small.txt"].size == 10
    tree = {entry.path for entry in api.list_repo_tree(hub_repo_id, recursive=True)}
    assert {"sub", "sub/nested.json"} <= tree

    assert Path(hf_hub_download(hub_repo_id, "small.txt")).read_text() == "hello hub\n"
    assert Path(hf_hub_download(hub_repo_id, "big.dat")).read_bytes() == (folder / "big.dat").read_bytes()
    snapshot = Path(snapshot_download(hub_repo_id))
    assert snapshot.name == first.oid
    for path in ("small.txt", "sub/nested.json", "big.dat"):
        assert (snapshot / path).read_bytes() == (folder / path).read_bytes()
    with HfFileSystem(skip_instance_cache=True).open(f"{hub_repo_id}/big.dat", "rb", block_size=64) as f:
        f.seek(BIG - 20)  # served with HTTP Range requests
        assert f.read() == (b"0123456789abcdef" * 2)[-20:]

    # Re-pushing the unchanged folder sends no file content and makes no commit.
    server.reset()
    again = api.upload_folder(repo_id=hub_repo_id, folder_path=folder)
    requests = server.requests()
    assert again.oid == first.oid
    assert not [r for r in requests if r["method"] == "PUT"]
    assert not _writes(requests, "/commit/")
    assert len(api.list_repo_commits(hub_repo_id)) == 2

    # Changing the small file commits it alone; the LFS object is not sent again.
    (folder / "small.txt").write_text("changed\n")
    server.reset()
    third = api.upload_folder(repo_id=hub_repo_id, folder_path=folder)
    requests = server.requests()
    assert third.oid != first.oid and not [r for r in requests if r["method"] == "PUT"]
    assert len(_writes(requests, "/commit/")) == 1
    assert Path(hf_hub_download(hub_repo_id, "small.txt")).read_text() == "changed\n"


def test_revisions_and_not_found_errors(hub_env, hub_repo_id):
    api = HfApi()
    api.create_repo(hub_repo_id)
    v1 = api.upload_file(repo_id=hub_repo_id, path_in_repo="a.txt", path_or_fileobj=b"v1").oid
    api.upload_file(repo_id=hub_repo_id, path_in_repo="a.txt", path_or_fileobj=b"v2")
    api.create_branch(hub_repo_id, branch="dev")
    api.upload_file(repo_id=hub_repo_id, path_in_repo="dev.txt", path_or_fileobj=b"dev", revision="dev")

    assert Path(hf_hub_download(hub_repo_id, "a.txt", revision=v1)).read_bytes() == b"v1"
    assert Path(hf_hub_download(hub_repo_id, "a.txt")).read_bytes() == b"v2"
    assert Path(hf_hub_download(hub_repo_id, "dev.txt", revision="dev")).read_bytes() == b"dev"
    assert "dev.txt" not in api.list_repo_files(hub_repo_id)
    assert api.model_info(hub_repo_id, revision=v1).sha == v1
    assert {b.name for b in api.list_repo_refs(hub_repo_id).branches} == {"main", "dev"}

    missing_repo = hub_repo_id + "-missing"
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(missing_repo, "a.txt")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(missing_repo)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(hub_repo_id, "a.txt", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        api.list_repo_files(hub_repo_id, revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(hub_repo_id, "dev.txt")  # only on the dev branch
    with pytest.raises(RepositoryNotFoundError):
        api.upload_file(repo_id=missing_repo, path_in_repo="a.txt", path_or_fileobj=b"x")


def test_transformers_push_to_hub_and_from_pretrained(hub_env, hub_repo_id):
    import torch  # a hard dependency: never skipped
    from transformers import AutoModel, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = BertModel(config)
    model.push_to_hub(hub_repo_id)
    files = HfApi().list_repo_files(hub_repo_id)
    assert {"config.json", "model.safetensors", "README.md"} <= set(files)

    loaded = AutoModel.from_pretrained(hub_repo_id)
    expected, actual = model.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)

    # Pushing the same model again uploads nothing and makes no commit.
    commits = len(HfApi().list_repo_commits(hub_repo_id))
    hub_env.server.reset()
    model.push_to_hub(hub_repo_id)
    requests = hub_env.server.requests()
    assert not [r for r in requests if r["method"] == "PUT"] and not _writes(requests, "/commit/")
    assert len(HfApi().list_repo_commits(hub_repo_id)) == commits

    # The token went out as a Bearer header only: not into the server's storage nor the local cache.
    assert any(r["headers"].get("authorization") == f"Bearer {hub_env.token}" for r in requests)
    needle = hub_env.token.encode()
    for base in (hub_env.server.root, hub_env.hf_home):
        for path in base.rglob("*"):
            if path.is_file():
                assert needle not in path.read_bytes(), path


def test_model_card_round_trip(hub_env, hub_repo_id):
    HfApi().create_repo(hub_repo_id)
    data = ModelCardData(
        language="en",
        license="apache-2.0",
        library_name="transformers",
        tags=["pruning", "sparse"],
        base_model="sentence-transformers/all-MiniLM-L6-v2",
    )
    card = ModelCard.from_template(data, model_description="A pruned test model.")
    card.push_to_hub(hub_repo_id)
    assert _writes(hub_env.server.requests(), "/api/validate-yaml")

    loaded = ModelCard.load(hub_repo_id)
    assert loaded.data.to_dict() == data.to_dict()
    assert "A pruned test model." in loaded.text


def test_upload_failures_then_retry(hub_env, hub_repo_id, tmp_path):
    api, server = HfApi(), hub_env.server
    folder = _make_folder(tmp_path / "folder")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    api.create_repo(hub_repo_id)

    # A 500 on the commit (which the client does not retry) fails the upload and changes nothing remotely.
    server.fail_next(r"/commit/main", status=500, method="POST")
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_folder(repo_id=hub_repo_id, folder_path=folder)
    assert err.value.response.status_code == 500
    assert api.list_repo_files(hub_repo_id) == [".gitattributes"]
    assert before == {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    # The next push succeeds; the LFS object stored by the failed push is not sent again.
    server.reset()
    api.upload_folder(repo_id=hub_repo_id, folder_path=folder)
    assert not [r for r in server.requests() if r["method"] == "PUT"]
    assert Path(hf_hub_download(hub_repo_id, "big.dat")).read_bytes() == before[folder / "big.dat"]

    # A connection dropped in the middle of an LFS PUT is retried by the client itself (after 1 s).
    server.reset()
    server.fail_next(r"/_lfs/upload/", method="PUT", mode="drop")
    api.upload_file(repo_id=hub_repo_id, path_in_repo="other.dat", path_or_fileobj=os.urandom(BIG))
    assert len([r for r in server.requests() if r["method"] == "PUT"]) == 2
    siblings = {s.rfilename: s for s in api.model_info(hub_repo_id, files_metadata=True).siblings}
    assert siblings["other.dat"].lfs.size == BIG


def test_multipart_lfs_upload(hub_env, hub_repo_id):
    api, server = HfApi(), hub_env.server
    server.set_multipart_chunk_size(4 * 1024 * 1024)
    data = os.urandom(BIG)
    api.create_repo(hub_repo_id)
    api.upload_file(repo_id=hub_repo_id, path_in_repo="weights.safetensors", path_or_fileobj=data)
    parts = [r for r in server.requests() if "/_lfs/part/" in r["path"]]
    assert len(parts) == 3
    assert Path(hf_hub_download(hub_repo_id, "weights.safetensors")).read_bytes() == data


def test_storage_survives_a_restart(hub_env, hub_repo_id, tmp_path):
    api = HfApi()
    api.create_repo(hub_repo_id)
    api.upload_file(repo_id=hub_repo_id, path_in_repo="kept.txt", path_or_fileobj=b"kept")
    second = type(hub_env.server)(hub_env.server.root, tmp_path / "second.log")  # a second process, same storage
    try:
        assert second.endpoint != hub_env.endpoint
        path = hf_hub_download(hub_repo_id, "kept.txt", endpoint=second.endpoint, cache_dir=tmp_path / "cache")
        assert Path(path).read_bytes() == b"kept"
    finally:
        second.stop()


def test_hub_env_is_undone_after_each_test(hub_server):
    """Runs after the tests above: nothing they patched still points at the test server."""
    import huggingface_hub.constants
    import huggingface_hub.hf_api

    assert huggingface_hub.constants.ENDPOINT != hub_server.endpoint
    assert huggingface_hub.hf_api.api.endpoint != hub_server.endpoint
    assert os.environ.get("HF_ENDPOINT") != hub_server.endpoint
    transformers_hub = sys.modules.get("transformers.utils.hub")
    shared_api = getattr(transformers_hub, "_hf_api", None)
    assert shared_api is None or shared_api.endpoint != hub_server.endpoint
