"""Real model check: the packaged MiniLM fine-tuned on real sentiment under all four regimes at 50 % sparsity."""

import pytest
import torch

from hf_junkdna.offline import minilm_path
from hf_junkdna.training.compare import format_comparison, run_regime_comparison


@pytest.mark.slow
def test_four_regimes_on_minilm_sentiment():
    from transformers import AutoModelForSequenceClassification

    pretrained = dict(
        AutoModelForSequenceClassification.from_pretrained(str(minilm_path()), num_labels=2).named_parameters()
    )
    checked = {}

    def check(regime, trainer):
        model = dict(trainer.model.named_parameters())
        masks = trainer.masks
        if regime == "dense":
            assert masks is None
            checked[regime] = True
            return
        assert masks.sparsity() == pytest.approx(0.5, abs=1e-6)
        released = []
        for name in masks.names():
            keep = masks.get(name)
            weight = model[name].detach()
            if regime == "sparse":
                assert bool((weight[~keep] == 0).all()), name
            elif regime == "freeze":
                assert torch.equal(weight[~keep], pretrained[name][~keep]), name
            else:
                released.append((weight[~keep] != 0).float())
            assert not torch.equal(weight[keep], pretrained[name][keep]), name
        if regime == "sparse_to_dense":
            assert float(torch.cat(released).mean()) > 0.9  # released halfway, then trained off 0
        checked[regime] = True

    results = run_regime_comparison(sparsity=0.5, on_trained=check)
    print("\n" + format_comparison(results))
    assert sorted(checked) == sorted(results) == sorted(["dense", "sparse", "freeze", "sparse_to_dense"])
    for regime, accuracy in results.items():
        assert accuracy > 0.6, f"{regime}: held-out accuracy {accuracy:.3f} is not above chance"
