"""Gradient clipping sees the sparse model's gradient in every backend.

The first optimizer step starts from the same pruned weights and batches everywhere, so its gradient norm
(the one clipping uses and the Trainer logs) must be the same under DDP, ZeRO-2, ZeRO-3 and FSDP2 (forced on
CPU), and differ from the dense gradient's norm that the negative controls (no gradient masking) log. The
same holds among the bf16 runs (ZeRO-2 and ZeRO-3).
"""

import pytest

pytestmark = pytest.mark.distributed

FP32 = ["ddp", "zero2", "zero3_thr0", "zero3_default", "fsdp2"]


def test_first_step_gradient_norm_is_the_masked_one_in_every_backend(launch):
    sparse = {config: launch(config)[0]["sparse"]["grad_norms"][0] for config in FP32}
    dense = {config: launch(config)[0]["negative"]["grad_norms"][0] for config in FP32}
    reference = sparse["ddp"]
    assert all(value == pytest.approx(reference, rel=1e-5) for value in sparse.values()), sparse
    assert all(value == pytest.approx(dense["ddp"], rel=1e-5) for value in dense.values()), dense
    assert abs(dense["ddp"] - reference) > 0.01 * reference  # the check can fail: unmasked norms differ


def test_first_step_gradient_norm_is_the_masked_one_in_bf16(launch):
    sparse = [launch(config)[0]["sparse"]["grad_norms"][0] for config in ("zero2_bf16_ga", "zero3_bf16_ga")]
    dense = launch("zero2_bf16_ga")[0]["negative"]["grad_norms"][0]
    assert sparse[0] == pytest.approx(sparse[1], rel=1e-5)
    assert abs(dense - sparse[0]) > 0.01 * sparse[0]
