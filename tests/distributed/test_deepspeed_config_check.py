"""A DeepSpeed config the mask code cannot serve is refused naming its key (no processes launched; the
refusal at SparseTrainer construction and at train begin is checked on 2 ranks in test_zero2.py)."""

import pytest

from hf_junkdna.training import UnsupportedBackendError
from hf_junkdna.training.backends.deepspeed import check_deepspeed_config


def _config(**zero):
    return {"zero_optimization": {"stage": 3, **zero}, "bf16": {"enabled": True}}


SERVED = [
    _config(),
    _config(stage=2),
    _config(stage3_param_persistence_threshold=0, sub_group_size=1000),
    _config(offload_optimizer={"device": "cpu", "pin_memory": True}),
    _config(offload_optimizer={"device": "none"}, offload_param={"device": "none"}),
    {**_config(), "optimizer": {"type": "AdamW", "params": {"lr": "auto"}}},
    _config(stage="2"),  # DeepSpeed takes the stage as a string too
]

REFUSED = {
    "zero_optimization.stage": {"zero_optimization": {"stage": 1}, "bf16": {"enabled": True}},
    "zero_optimization.stage=0": {"bf16": {"enabled": True}},
    "zero_optimization.offload_optimizer.device": _config(offload_optimizer={"device": "nvme", "nvme_path": "/x"}),
    "zero_optimization.offload_optimizer.ratio": _config(offload_optimizer={"device": "cpu", "ratio": 0.3}),
    "zero_optimization.offload_param.device": _config(offload_param={"device": "cpu"}),
    "zero_optimization.round_robin_gradients": _config(stage=2, round_robin_gradients=True),
    "zero_optimization.zero_quantized_weights": _config(zero_quantized_weights=True),
    "zero_optimization.zero_quantized_gradients": _config(zero_quantized_gradients=True),
    "zero_optimization.zero_hpz_partition_size": _config(zero_hpz_partition_size=8),
    "zero_optimization.mics_shard_size": _config(mics_shard_size=4),
    "zero_optimization.zenflow": _config(stage=2, zenflow={"topk_ratio": 0.1}),
    "optimizer.type": {**_config(), "optimizer": {"type": "Muon", "params": {}}},
    "tensor_parallel.autotp_size": {**_config(), "tensor_parallel": {"autotp_size": 2}},
    "zero_optimization.offload_optimizer.super_offload": _config(
        offload_optimizer={"device": "cpu", "super_offload": True}
    ),
    "zero_optimization.cpu_offload_param": _config(cpu_offload_param=True),
    "zero_optimization.mics_shard_size=auto": _config(mics_shard_size="auto"),
    "zero_optimization.zero_hpz_partition_size=auto": _config(zero_hpz_partition_size="auto"),
    "tensor_parallel.autotp_size=auto": {**_config(), "tensor_parallel": {"autotp_size": "auto"}},
}


@pytest.mark.parametrize("config", SERVED)
def test_served_configs_pass(config):
    check_deepspeed_config(config)


@pytest.mark.parametrize("key", sorted(REFUSED))
def test_refused_configs_name_the_key(key):
    with pytest.raises(UnsupportedBackendError, match=key.split("=")[0].replace(".", r"\.")) as error:
        check_deepspeed_config(REFUSED[key])
    assert "docs/distributed.md" in str(error.value)


def test_shipped_configs_are_served_and_load_in_accelerate():
    """recipes/configs: the DeepSpeed files pass the check; the accelerate files parse and point at them."""
    import json
    from pathlib import Path

    from accelerate.commands.config.config_args import ClusterConfig

    repo = Path(__file__).resolve().parents[2]
    configs = repo / "recipes" / "configs"
    for name in ("ds_zero2", "ds_zero3", "ds_zero3_offload"):
        config = json.loads((configs / f"{name}.json").read_text())
        check_deepspeed_config(config)
        if config["zero_optimization"]["stage"] == 3:  # save_model writes model.safetensors
            assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    for path in sorted(configs.glob("accelerate_*.yaml")):
        cluster = ClusterConfig.from_yaml_file(str(path))
        deepspeed_file = (cluster.deepspeed_config or {}).get("deepspeed_config_file")
        if deepspeed_file:
            assert (repo / deepspeed_file).is_file(), path.name
        else:
            assert (
                cluster.fsdp_config["fsdp_version"] == 2 and not cluster.fsdp_config["fsdp_cpu_ram_efficient_loading"]
            )


def test_a_deepspeed_run_the_optimizer_chain_does_not_show_is_still_checked_at_bind():
    """ZeRO stage 0 with a torch optimizer looks like a plain run to the optimizer chain: the stock Trainer with
    a regime callback must refuse it at bind as SparseTrainer does at construction (not bind and clip dense)."""
    import torch
    from tiny_models import tiny_llama
    from transformers.integrations import HfDeepSpeedConfig

    from hf_junkdna import SparsityConfig, prune
    from hf_junkdna.training import SparseRegimeCallback

    model = tiny_llama()
    masks = prune(model, SparsityConfig(sparsity=0.5))
    optimizer = torch.optim.AdamW(model.parameters())
    SparseRegimeCallback(masks).bind(model, optimizer).detach()  # no DeepSpeed run: binds
    active = HfDeepSpeedConfig({"zero_optimization": {"stage": 0}, "train_micro_batch_size_per_gpu": 1})
    try:
        with pytest.raises(UnsupportedBackendError, match=r"zero_optimization\.stage=0"):
            SparseRegimeCallback(masks).bind(model, optimizer)
    finally:
        del active  # transformers holds it by a weak reference: the run is over
