"""The three regimes on a CUDA device (packed masks copied to the device once, fused AdamW there)."""

import pytest
import torch
from training.training_helpers import TokenData, snapshot, tiny_bert, training_args

from hf_junkdna.training import SparseTrainer

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("regime", ["sparse", "freeze", "sparse_to_dense"])
def test_regime_invariants_on_cuda(tmp_path, regime):
    model = tiny_bert()
    pretrained = snapshot(model)
    extra = {"freeze_fraction": 0.5} if regime == "freeze" else {"sparsity": 0.5}
    args = training_args(tmp_path, regime=regime, use_cpu=False, weight_decay=0.1, max_steps=8, **extra)
    trainer = SparseTrainer(model, args, train_dataset=TokenData())
    trainer.train()
    masks = trainer.masks
    parameters = dict(model.named_parameters())
    assert parameters[masks.names()[0]].device.type == "cuda"
    for name in masks.names():
        keep = masks.get(name).cuda()
        weight = parameters[name].detach()
        if regime == "sparse":
            assert bool((weight[~keep] == 0).all()), name
        elif regime == "freeze":
            assert torch.equal(weight[~keep].cpu(), pretrained[name][~keep.cpu()]), name
        else:
            assert float((weight[~keep] != 0).float().mean()) > 0.5, name
        assert not torch.equal(weight[keep].cpu(), pretrained[name][keep.cpu()]), name
