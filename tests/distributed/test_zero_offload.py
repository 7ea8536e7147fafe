"""DeepSpeed ZeRO-2 and ZeRO-3 with the optimizer offloaded to the CPU (DeepSpeedCPUAdam), bf16, 2 real processes.

Marked slow: the first start compiles DeepSpeed's cpu_adam extension (~130 s on 2 cores, cached under
TORCH_EXTENSIONS_DIR afterwards). It still runs in CI (`make test`). ZeRO-2 here exercises the offload path's
per-parameter gradient norms, which the binding recomputes after masking.
"""

import pytest
from distributed.launcher import check_freeze, check_negative, check_shard_memory, check_sparse

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

CONFIGS = pytest.mark.parametrize("config", ["zero3_offload", "zero2_offload"], ids=["zero3", "zero2"])


@CONFIGS
def test_cpu_offload_masks_hold_everywhere(launch, config):
    results = launch(config)
    check_sparse(results, backend="deepspeed", exact_resume=False)
    check_freeze(results, backend="deepspeed")
    check_negative(results, must_fail_in=("bad_master",))
    check_shard_memory(results, sharded=True)
