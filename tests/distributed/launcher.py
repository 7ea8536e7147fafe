"""Launch worker.py on 2 CPU processes (torchrun, gloo) and check what each rank recorded.

One launch per backend configuration runs several phases (``PHASES``); the session-scoped ``launch`` fixture
(conftest.py) runs each configuration at most once per pytest session, so the per-backend test files and the
cross-backend comparison share launches. The ``check_*`` functions hold the assertions the backend files share.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("worker.py")
TIMEOUT_S = 600  # the first DeepSpeed start compiles its comm op (~60 s), CPU offload also cpu_adam (~130 s)

PHASES = {
    "ddp": ["sparse", "freeze", "negative", "sparse_to_dense"],
    "zero2": ["errors", "sparse", "freeze", "negative", "sparse_to_dense"],
    "zero2_bf16_ga": ["sparse", "freeze", "negative"],
    "zero3_thr0": ["sparse", "freeze", "negative", "sparse_to_dense", "zero_init"],
    "zero3_default": ["sparse", "freeze", "negative"],
    "zero3_bf16_ga": ["sparse", "freeze", "negative", "zero_init"],
    "fsdp2": ["sparse", "freeze", "negative", "sparse_to_dense"],
    "zero3_offload": ["sparse", "freeze", "negative"],
    "zero2_offload": ["sparse", "freeze", "negative", "sparse_to_dense"],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: str, out: Path) -> list[dict]:
    """Run the configuration's phases on 2 ranks; return [rank0 results, rank1 results]."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",  # 2 ranks on a shared 2-core machine
        OMP_WAIT_POLICY="PASSIVE",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        TRANSFORMERS_VERBOSITY="error",
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]),
    )
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))  # as the Makefile sets it
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(WORKER),
        "--config",
        config,
        "--out",
        str(out),
        "--phases",
        ",".join(PHASES[config]),
    ]
    log_path = out / "launch.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            returncode = process.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the launch's own process group
            process.wait()
            pytest.fail(f"{config}: no result within {TIMEOUT_S} s; log tail:\n{_tail(log_path)}")
    results = []
    for rank in (0, 1):
        path = out / f"rank{rank}.json"
        if not path.exists():
            pytest.fail(
                f"{config}: rank {rank} wrote no results (exit code {returncode}); log tail:\n{_tail(log_path)}"
            )
        results.append(json.loads(path.read_text()))
    errors = [f"rank {r['rank']}:\n{r['error']}" for r in results if "error" in r]
    if errors:
        pytest.fail(f"{config} failed:\n" + "\n".join(errors))
    if returncode != 0:  # both ranks wrote complete results, then the launch died: say so, do not hide it
        pytest.fail(f"{config}: results complete but torchrun exited {returncode}; log tail:\n{_tail(log_path)}")
    return results


def _tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# ----------------------------------------------------------------------------------------------- checks
_SPARSE_PLACES = (
    "bad_weights",  # gathered module weights after training
    "bad_master",  # the fp32 master (DeepSpeed; -1 where there is none)
    "bad_save_model",  # save_model's safetensors (FSDP2: the merged sharded checkpoint)
    "bad_zero_to_fp32",  # DeepSpeed's zero_to_fp32 of the last checkpoint
    "bad_resume_begin_weights",  # resumed from checkpoint-2: as loaded, before any step
    "bad_resume_begin_master",
    "bad_resume_weights",  # resumed and trained to the end
    "bad_resume_master",
)


def violations(result: dict) -> list[str]:
    """Places where masked-out positions are not what they must be (0 / pretrained); empty when all hold."""
    return [f"{key}={result[key]}" for key in _SPARSE_PLACES if key in result and result[key] not in (0, -1)]


def check_sparse(results: list[dict], backend: str, exact_resume: bool = True) -> None:
    for r in results:
        s = r["sparse"]
        assert s["start_pruned_nonzero"] == s["pruned_total"] > 0  # the model was dense before pruning
        assert violations(s) == [], (r["rank"], violations(s))
        assert s["kept_moved"] >= 0.9 * s["kept_total"]  # kept weights train (bf16 rounds a few updates away)
        assert s["logged_sparsity"] == 0.5
        if exact_resume:  # torch AdamW: the resumed run is the uninterrupted one, bit for bit
            assert s["resume_max_diff"] == 0.0
        else:  # DeepSpeedCPUAdam is not bitwise reproducible: one bf16 rounding step at most
            assert s["resume_max_diff"] <= 2**-7
    rank0 = results[0]["sparse"]
    assert rank0["masks_file_equal_final"] and rank0["masks_file_equal_checkpoint-4"]
    assert "bad_save_model" in rank0
    if backend == "deepspeed":
        assert "bad_zero_to_fp32" in rank0 and rank0["bad_master"] == 0


def check_freeze(results: list[dict], backend: str) -> None:
    for r in results:
        f = r["freeze"]
        assert f["bad_weights"] == 0 and f["bad_master"] in (0, -1), (r["rank"], f)
        assert f["kept_moved"] >= 0.9 * f["frozen_total"]  # half frozen: the trainable half moved
    if backend == "deepspeed":
        assert results[0]["freeze"]["bad_zero_to_fp32"] == 0


def check_negative(results: list[dict], must_fail_in: tuple[str, ...]) -> None:
    """The same places checked as for the sparse regime, with module weights masked only: they must fail."""
    for r in results:
        n = r["negative"]
        failed = {v.split("=")[0] for v in violations(n)}
        assert failed, f"rank {r['rank']}: the negative control passed every check, so the checks prove nothing"
        assert set(must_fail_in) <= failed, (r["rank"], n)


def check_shard_memory(results: list[dict], sharded: bool) -> None:
    """Masks held per rank while training, packed: a non-main rank holds its shard only (about 1/2 here)."""
    full = results[0]["sparse"]["mask_bytes_full"]
    total = results[0]["sparse"]["kept_total"] + results[0]["sparse"]["pruned_total"]
    local = [r["sparse"]["local_elements"] for r in results]
    if not sharded:  # DDP: every rank binds every mask, whole
        assert local == [total, total]
        assert [r["sparse"]["masks_type"] for r in results] == ["MaskSet", "MaskSet"]
        return
    assert sum(local) == total and all(0 < n < total for n in local)
    slack = 16 * 2  # at most one partial byte per bound fragment (16 masked weights here)
    rank0, rank1 = results[0]["sparse"], results[1]["sparse"]
    assert rank1["masks_type"] == "ShardMaskSet" and rank1["resume_masks_type"] == "ShardMaskSet"
    assert rank1["mask_bytes_held"] <= local[1] / 8 + slack < full  # its shard only, not the full set
    assert rank0["masks_type"] == "MaskSet"  # the main process keeps the full set to write checkpoints
    assert rank0["mask_bytes_held"] <= full + local[0] / 8 + slack
