"""FSDP2 FORCED ON CPU, 2 real processes over gloo: accelerate keeps its FSDP plugin only on accelerators (on
MULTI_CPU it silently runs DDP), so these tests put the plugin back in a test-only Trainer subclass
(worker._ForceFSDP2). Parameters are DTensors sharded on dim 0; masks sit on each rank's rows. save_model with
SHARDED_STATE_DICT writes no weights (transformers' rule) and FULL_STATE_DICT on a CPU mesh gives DTensors, so
the saved-weights check reads the sharded checkpoint merged as users merge it (accelerate merge-weights)."""

import pytest
from distributed.launcher import check_freeze, check_negative, check_shard_memory, check_sparse

pytestmark = pytest.mark.distributed


def test_fsdp2_forced_on_cpu_pruned_weights_stay_zero_in_weights_checkpoint_and_after_resume(launch):
    check_sparse(launch("fsdp2"), backend="fsdp2")


def test_fsdp2_forced_on_cpu_frozen_weights_bit_identical_with_gradient_hooks_on_dtensors(launch):
    """The stock Trainer + FreezeRegimeCallback: post-accumulate-grad hooks mask the reduced DTensor shards."""
    check_freeze(launch("fsdp2"), backend="fsdp2")


def test_fsdp2_forced_on_cpu_negative_control_masking_stale_parameters_fails(launch):
    """Masking the parameters captured before the Trainer wrapped the model: fully_shard replaced them."""
    check_negative(launch("fsdp2"), must_fail_in=("bad_weights",))


def test_fsdp2_forced_on_cpu_each_rank_holds_masks_of_its_rows_only(launch):
    check_shard_memory(launch("fsdp2"), sharded=True)


def test_fsdp2_forced_on_cpu_sparse_to_dense_on_shards_that_start_mid_byte(launch):
    results = launch("fsdp2")
    assert any(offset != 0 for r in results for offset in r["sparse_to_dense"]["mid_byte_offsets"])
    for r in results:
        assert r["sparse_to_dense"]["failures"] == []
