"""DeepSpeed ZeRO-3, 2 real processes over gloo on the CPU, through the real Trainer.

Three configurations: stage3_param_persistence_threshold 0 (every weight partitioned outside forward; six
flat masters via sub_group_size), the default threshold (every weight of a tiny model persists, gathered on
every rank: the configuration that hides bugs of code touching only p.data), and bf16 with gradient
accumulation. Masks sit on this rank's fragment of each parameter in the fp32 master partition.
"""

import pytest
from distributed.launcher import check_freeze, check_negative, check_shard_memory, check_sparse

pytestmark = pytest.mark.distributed

CONFIGS = pytest.mark.parametrize(
    "config",
    ["zero3_thr0", "zero3_default", "zero3_bf16_ga"],
    ids=["persistence-threshold-0", "default-persistence-threshold", "bf16-grad-accumulation"],
)


@CONFIGS
def test_zero3_pruned_weights_stay_zero_in_weights_master_save_model_zero_to_fp32_and_resume(launch, config):
    check_sparse(launch(config), backend="deepspeed")


@CONFIGS
def test_zero3_frozen_weights_bit_identical_in_weights_master_and_zero_to_fp32(launch, config):
    """Under bf16 the reference of the master is bf16(pretrained): the value DeepSpeed's cast starts it from."""
    check_freeze(launch(config), backend="deepspeed")


@CONFIGS
def test_zero3_negative_control_masking_module_weights_only_fails(launch, config):
    check_negative(launch(config), must_fail_in=("bad_master",))
    assert launch(config)[0]["negative"]["bad_zero_to_fp32"] > 0


@CONFIGS
def test_zero3_each_rank_holds_masks_of_its_partition_only(launch, config):
    check_shard_memory(launch(config), sharded=True)


def test_zero3_sparse_to_dense_on_a_partition_that_starts_mid_byte(launch):
    results = launch("zero3_thr0")
    assert any(offset != 0 for r in results for offset in r["sparse_to_dense"]["mid_byte_offsets"])
    for r in results:
        assert r["sparse_to_dense"]["failures"] == []


@pytest.mark.parametrize("config", ["zero3_thr0", "zero3_bf16_ga"], ids=["fp32", "bf16"])
def test_zero3_prunes_a_model_partitioned_by_zero_init(launch, config):
    """from_pretrained under zero.Init gives a partitioned model; magnitude pruning then scores each rank's own
    slices (no weight gathered) and must give the masks of pruning the whole model in one process: global,
    per layer and 2:4 (bf16 weights tie often: the exact tie order matters). Rank 0 holds the full masks, rank 1
    its partitions only; training keeps them."""
    for r in launch(config):
        z = r["zero_init"]
        assert z["partitioned"]
        assert z["equal_global"] and z["equal_layer"] and z["equal_2:4"], z
        assert z["bad_weights_given_masks"] == 0  # precomputed masks: each rank pruned its own slices
        assert z["bad_weights"] == 0 and z["bad_master"] == 0
        assert z["masks_type_before_train"] == ("MaskSet" if r["rank"] == 0 else "ShardMaskSet")
