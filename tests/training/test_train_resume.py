"""Kill training with SIGKILL right after a checkpoint, resume in a new process: masks and invariants hold."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from training.training_helpers import tiny_bert

from hf_junkdna import MaskSet
from hf_junkdna.training import MASKS_NAME

CHILD = os.path.join(os.path.dirname(__file__), "resume_child.py")


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def _kill_after_checkpoint(model_dir, output_dir, regime, step=4, timeout=180):
    child = subprocess.Popen(
        [sys.executable, CHILD, str(model_dir), str(output_dir), regime, "start"],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    masks_file = output_dir / f"checkpoint-{step}" / MASKS_NAME
    state_file = output_dir / f"checkpoint-{step}" / "trainer_state.json"  # written last: the checkpoint is whole
    deadline = time.monotonic() + timeout
    try:
        while not (masks_file.exists() and state_file.exists()):
            if child.poll() is not None:
                pytest.fail(
                    f"training exited ({child.returncode}) before checkpoint-{step}:\n{child.stdout.read().decode()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"no {masks_file} after {timeout} s")
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert not (output_dir / f"checkpoint-{step + 2}").exists()  # it really died mid-run
    return MaskSet.load(masks_file)


def _resume(model_dir, output_dir, regime):
    done = subprocess.run(
        [sys.executable, CHILD, str(model_dir), str(output_dir), regime, "resume"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((output_dir / "resume_report.json").read_text())


@pytest.mark.parametrize("regime", ["sparse", "freeze", "sparse_to_dense"])
def test_sigkill_after_checkpoint_then_resume(tmp_path, regime):
    pretrained = tiny_bert()
    model_dir = tmp_path / "pretrained"
    pretrained.save_pretrained(model_dir)
    original = {name: value.detach().clone() for name, value in pretrained.named_parameters()}
    output_dir = tmp_path / "run"

    checkpoint_masks = _kill_after_checkpoint(model_dir, output_dir, regime)
    report = _resume(model_dir, output_dir, regime)

    assert report["global_step"] == 4  # resumed where the checkpoint was, not from scratch
    final_dir = output_dir / "final"
    final_masks = MaskSet.load(final_dir / MASKS_NAME)
    assert final_masks == checkpoint_masks  # bit-identical packed masks
    assert MaskSet.load(output_dir / "checkpoint-8" / MASKS_NAME) == checkpoint_masks
    state = json.loads((output_dir / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8  # training completed

    from transformers import BertForSequenceClassification

    final = dict(BertForSequenceClassification.from_pretrained(final_dir).named_parameters())
    for name in final_masks.names():
        keep = final_masks.get(name)
        if regime == "freeze":  # frozen values identical to the ORIGINAL pretrained ones, across the kill
            assert torch.equal(final[name][~keep], original[name][~keep]), name
        if regime == "sparse":  # pruned weights exactly 0 in the checkpoints' weights and the final ones
            for folder in (output_dir / "checkpoint-4", output_dir / "checkpoint-8", final_dir):
                saved = load_file(str(folder / "model.safetensors"))[name]
                assert not saved[~keep].any(), f"{folder.name}: {name}"
        assert not torch.equal(final[name][keep], original[name][keep]), name
    if regime == "sparse_to_dense":
        # linear over all 8 steps: at step 4 half the pruned half is released, the rest still exactly 0
        assert report["trainable_fraction"] == pytest.approx(0.75, abs=0.01)
        assert report["untrainable_are_zero"]
        moved = torch.cat([(final[n][~final_masks.get(n)] != 0).float() for n in final_masks.names()])
        assert float(moved.mean()) > 0.8


def test_killed_while_saving_resumes_from_the_last_whole_checkpoint(tmp_path, monkeypatch):
    """A kill inside checkpoint-4's save (during the mask write) with save_total_limit=1: checkpoint-2 must
    survive (rotation comes after the masks and the trainer state) and resuming must start from it."""
    from training.training_helpers import TokenData, training_args

    from hf_junkdna.training import SparseTrainer

    class Killed(BaseException):  # like SIGKILL: nothing in the Trainer catches it
        pass

    real_save = MaskSet.save

    def save_or_die(self, path):
        if "checkpoint-4" in str(path):
            raise Killed
        real_save(self, path)

    args = dict(regime="sparse", sparsity=0.5, max_steps=6, save_strategy="steps", save_steps=2, save_total_limit=1)
    trainer = SparseTrainer(tiny_bert(), training_args(tmp_path, **args), train_dataset=TokenData())
    monkeypatch.setattr(MaskSet, "save", save_or_die)
    with pytest.raises(Killed):
        trainer.train()
    monkeypatch.setattr(MaskSet, "save", real_save)
    output_dir = tmp_path / "out"
    assert (output_dir / "checkpoint-2" / "trainer_state.json").exists()
    assert not (output_dir / "checkpoint-4" / "trainer_state.json").exists()

    resumed = SparseTrainer(tiny_bert(), training_args(tmp_path, **args), train_dataset=TokenData())
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 6
    assert MaskSet.load(output_dir / "checkpoint-6" / MASKS_NAME) == resumed.masks
    parameters = dict(resumed.model.named_parameters())
    for name, keep in resumed.masks.items():
        assert not parameters[name].detach()[~keep].any(), name


def test_resume_from_checkpoint_argument_takes_the_checkpoints_masks_without_pruning_again(tmp_path, monkeypatch):
    """args.resume_from_checkpoint (as the transformers example scripts set it): the resumed trainer's masks are
    the checkpoint's, and Wanda's calibration is not run again (here it would fail: prune is made to raise)."""
    from training.training_helpers import TokenData, training_args

    from hf_junkdna.training import SparseTrainer
    from hf_junkdna.training import trainer as trainer_module

    args = dict(
        regime="sparse", sparsity_method="wanda", sparsity=0.5, max_steps=4, save_strategy="steps", save_steps=2
    )
    first = SparseTrainer(tiny_bert(), training_args(tmp_path, **args), train_dataset=TokenData())
    first.train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    saved = MaskSet.load(checkpoint / MASKS_NAME)

    def no_pruning(*args, **kwargs):
        raise AssertionError("pruned again although resuming")

    monkeypatch.setattr(trainer_module, "prune", no_pruning)
    resume_args = training_args(tmp_path, **args, resume_from_checkpoint=str(checkpoint))
    resumed = SparseTrainer(tiny_bert(), resume_args, train_dataset=TokenData())
    assert resumed.masks == saved
    resumed.train(resume_from_checkpoint=resume_args.resume_from_checkpoint)
    assert resumed.state.global_step == 4
    parameters = dict(resumed.model.named_parameters())
    assert all(not parameters[name].detach()[~keep].any() for name, keep in resumed.masks.items())

    latest = SparseTrainer(tiny_bert(), training_args(tmp_path, **args, resume_from_checkpoint="True"))
    assert latest.masks == MaskSet.load(tmp_path / "out" / "checkpoint-4" / MASKS_NAME)
    with pytest.raises(FileNotFoundError, match=r"resume_from_checkpoint=.*has no sparsity_masks"):
        SparseTrainer(tiny_bert(), training_args(tmp_path, **args, resume_from_checkpoint=str(tmp_path)))
