"""DeepSpeed ZeRO-2, 2 real processes over gloo on the CPU, through the real Trainer, fp32 and bf16 (gradient
accumulation 2 in both): masks on this rank's fragment of the flat fp32 master, which DeepSpeed copies into the
bf16/fp32 module weights. The model's sizes put a partition boundary mid-byte inside a weight (offset 2 mod 8)."""

import pytest
from distributed.launcher import check_freeze, check_negative, check_shard_memory, check_sparse

pytestmark = pytest.mark.distributed

CONFIGS = pytest.mark.parametrize("config", ["zero2", "zero2_bf16_ga"], ids=["fp32", "bf16-grad-accumulation"])


@CONFIGS
def test_zero2_pruned_weights_stay_zero_in_weights_master_save_model_zero_to_fp32_and_resume(launch, config):
    check_sparse(launch(config), backend="deepspeed")


@CONFIGS
def test_zero2_frozen_weights_bit_identical_in_weights_master_and_zero_to_fp32(launch, config):
    check_freeze(launch(config), backend="deepspeed")


@CONFIGS
def test_zero2_negative_control_masking_module_weights_only_fails(launch, config):
    """Re-zeroing the module weights after every step looks fine in the weights, but the fp32 master (and
    so zero_to_fp32, and every resumed run) keeps the pruned weights training."""
    check_negative(launch(config), must_fail_in=("bad_master",))
    assert launch(config)[0]["negative"]["bad_zero_to_fp32"] > 0


@CONFIGS
def test_zero2_each_rank_holds_masks_of_its_partition_only(launch, config):
    check_shard_memory(launch(config), sharded=True)


def test_zero2_sparse_to_dense_on_a_partition_that_starts_mid_byte(launch):
    results = launch("zero2")
    assert any(offset != 0 for r in results for offset in r["sparse_to_dense"]["mid_byte_offsets"])
    for r in results:
        assert r["sparse_to_dense"]["failures"] == []
        assert r["sparse_to_dense"]["released"][-1] == 1.0


def test_zero2_configs_the_masks_cannot_serve_stop_at_start_naming_the_key(launch):
    for r in launch("zero2"):
        errors = r["errors"]
        assert "zero_optimization.stage=1" in errors["stage1_bf16"]
        assert "zero_optimization.offload_optimizer.device='nvme'" in errors["nvme"]
        # the same config given by `accelerate launch --config_file` (environment) instead of TrainingArguments
        assert "zero_optimization.stage=1" in errors["accelerate_config_stage1"]
        # the stock Trainer with a regime callback: refused at train begin, before any step
        assert "zero_optimization.stage=1" in errors["stock_trainer_stage1"]
