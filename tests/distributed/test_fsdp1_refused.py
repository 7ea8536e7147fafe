"""FSDP1 is refused with its own message wherever its wrappers sit (the root wrapper is stripped by unwrapping,
auto-wrapped blocks sit deep inside), in one real gloo process: never a misleading name mismatch, never a bind
that silently tracks no parameter."""

import socket
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.distributed

CHILD = textwrap.dedent(
    """
    import os, sys, torch, torch.distributed as dist
    from torch import nn
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from hf_junkdna.masks import MaskSet
    from hf_junkdna.training import SparseRegimeCallback, UnsupportedBackendError
    from hf_junkdna.training.mask_binding import MaskBinding

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo", rank=0, world_size=1)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(16, 16)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([Block() for _ in range(2)])
            self.head = nn.Linear(16, 2)

    for use_orig_params in (True, False):
        for policy in (ModuleWrapPolicy({Block}), None):
            model = Model()
            masks = MaskSet({n: p.abs() > 0.1 for n, p in model.named_parameters() if p.dim() == 2})
            wrapped = FSDP(model, auto_wrap_policy=policy, use_orig_params=use_orig_params, device_id=torch.device("cpu"))
            optimizer = torch.optim.AdamW(wrapped.parameters(), lr=1e-3)
            for bind in (lambda: SparseRegimeCallback(masks).bind(wrapped, optimizer),
                         lambda: MaskBinding(wrapped, optimizer, masks)):
                try:
                    bind()
                except UnsupportedBackendError as error:
                    assert "FSDP1" in str(error), error
                else:
                    raise SystemExit(f"bound under FSDP1 (use_orig_params={use_orig_params}, policy={policy})")
    dist.destroy_process_group()
    print("refused every time")
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_fsdp1_is_refused_by_name_with_and_without_auto_wrap():
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(_free_port())], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "refused every time" in result.stdout, result.stdout + result.stderr
