"""DDP, 2 real processes over gloo on the CPU (torchrun): masks on the module weights every rank updates."""

import pytest
from distributed.launcher import check_freeze, check_negative, check_shard_memory, check_sparse

pytestmark = pytest.mark.distributed


def test_ddp_pruned_weights_stay_zero_in_weights_save_model_and_after_resume(launch):
    check_sparse(launch("ddp"), backend="ddp")


def test_ddp_frozen_weights_bit_identical(launch):
    check_freeze(launch("ddp"), backend="ddp")


def test_ddp_negative_control_fails_the_same_check(launch):
    """Under DDP the optimizer updates the module weights themselves, so masking them after every step would
    hold; the control here is pruning once and training with the stock Trainer and no masking at all."""
    check_negative(launch("ddp"), must_fail_in=("bad_weights",))


def test_ddp_every_rank_binds_whole_masks(launch):
    check_shard_memory(launch("ddp"), sharded=False)


def test_ddp_sparse_to_dense_bits_match_the_whole_parameter(launch):
    for r in launch("ddp"):
        assert r["sparse_to_dense"]["failures"] == []
        assert r["sparse_to_dense"]["released"][-1] == 1.0
