"""What ``SparseTrainer.push_to_hub`` calls: push the trainer's model, mask and card as a pruned checkpoint.

The trainer (src/hf_junkdna/training/trainer.py) overrides ``push_to_hub`` with (when it has masks)::

    def push_to_hub(self, commit_message="End of training", blocking=True, **kwargs):
        from ..hub.trainer_integration import push_trainer_to_hub
        return push_trainer_to_hub(self, commit_message=commit_message, blocking=blocking, **kwargs)

so ``kwargs`` holds what callers pass to ``transformers.Trainer.push_to_hub``: ``token``, ``revision``,
``private``, and the keyword arguments it forwards to ``Trainer.create_model_card`` (``language``, ``license``,
``tags``, ``model_name``, ``finetuned_from``, ``tasks``, ``dataset_tags``, ``dataset``, ``dataset_args``; checked
against transformers 5.24), which ``card_kwargs_from_trainer`` maps onto ``save_pruned``'s card arguments.
"""

from __future__ import annotations

import logging
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from ..masks import MaskSet
from .push import push_pruned_to_hub

logger = logging.getLogger(__name__)

# Trainer.create_model_card's arguments that have no counterpart in the pruned card (dataset_args are
# configuration names shown in Trainer's model-index, which here lists only measured points).
_IGNORED_TRAINER_CARD_KWARGS = ("dataset_args",)

_SECRET_OPTION = re.compile(r"token|secret|password|api[_-]?key", re.IGNORECASE)


def default_command(argv: list[str] | None = None) -> str:
    """The launching command line (``sys.argv``), with the values of token/secret options replaced."""
    argv = list(sys.argv if argv is None else argv)
    if not argv or not argv[0]:
        return ""
    out, hide_next = [], False
    for arg in argv:
        if hide_next:
            out.append("<redacted>")
            hide_next = False
        elif arg.startswith("-") and _SECRET_OPTION.search(arg):
            if "=" in arg:
                out.append(arg.split("=", 1)[0] + "=<redacted>")
            else:
                out.append(arg)
                hide_next = True
        else:
            out.append(arg)
    return "python " + shlex.join(out)


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def card_kwargs_from_trainer(kwargs: dict[str, Any], model_tags: Any = None) -> dict[str, Any]:
    """Map ``Trainer.push_to_hub``/``create_model_card`` keyword arguments onto ``save_pruned``'s (a new dict).

    ``tags`` (plus the model's ``model_tags``, as Trainer adds them) become extra card tags; ``finetuned_from``
    becomes ``base_model``; ``dataset_tags`` (Hub dataset ids), else ``dataset``, become ``datasets``; ``tasks``
    becomes ``task`` (several are joined with ", "); ``language``, ``license`` and ``model_name`` are the same
    names. ``save_pruned``'s own names win where both are given. ``dataset_args`` is ignored (debug log). Any
    other name is left in place, so that ``save_pruned`` rejects a misspelt argument.
    """
    kwargs = dict(kwargs)
    tags = _as_list(kwargs.pop("tags", None))
    tags += [tag for tag in _as_list(model_tags) if tag not in tags]
    if tags:
        kwargs["tags"] = tags
    finetuned_from = kwargs.pop("finetuned_from", None)
    if finetuned_from:
        kwargs.setdefault("base_model", finetuned_from)
    dataset_tags, dataset = kwargs.pop("dataset_tags", None), kwargs.pop("dataset", None)
    datasets = _as_list(dataset_tags) or _as_list(dataset)
    if datasets:
        kwargs.setdefault("datasets", datasets)
    if dataset_tags is not None and dataset is not None:
        logger.debug("push_to_hub: dataset=%r ignored; the card lists dataset_tags=%r", dataset, dataset_tags)
    tasks = _as_list(kwargs.pop("tasks", None))
    if tasks:
        kwargs.setdefault("task", ", ".join(tasks))
    for name in _IGNORED_TRAINER_CARD_KWARGS:
        if name in kwargs:
            logger.debug("push_to_hub: %s=%r is not used by the pruned model card", name, kwargs.pop(name))
    return kwargs


def _is_sharded(trainer: Any) -> str | None:
    if getattr(trainer, "is_fsdp_enabled", False):
        return "FSDP"
    if getattr(trainer, "is_deepspeed_enabled", False):
        plugin = getattr(getattr(trainer.accelerator, "state", None), "deepspeed_plugin", None)
        if getattr(plugin, "zero_stage", None) == 3:
            return "DeepSpeed ZeRO-3"
    return None


def push_trainer_to_hub(
    trainer: Any,
    repo_id: str | None = None,
    *,
    commit_message: str | None = "End of training",
    blocking: bool = True,
    token: str | None = None,
    revision: str | None = None,
    private: bool | None = None,
    masks: MaskSet | None = None,
    regime: str | None = None,
    **save_kwargs: Any,
):
    """Push ``trainer.model`` with its mask as a pruned checkpoint (``push_pruned_to_hub``); returns the CommitInfo.

    Defaults come from the trainer: ``masks`` from ``trainer.masks``, ``regime`` from ``trainer.args.regime``
    (else the masks' metadata), ``repo_id`` from ``args.hub_model_id`` (else the output folder's name), ``token``
    from ``args.hub_token``, ``private`` from ``args.hub_private_repo``, ``revision`` from ``args.hub_revision``,
    the tokenizer from ``trainer.processing_class`` and the command from ``sys.argv`` (token options redacted).
    Other keyword arguments (results, task, difficulty, compressed, ...) go to ``save_pruned``, after
    ``card_kwargs_from_trainer`` has mapped Trainer's card arguments (``tags``, ``finetuned_from``, ``dataset``,
    ``dataset_tags``, ``tasks``, ``language``, ``license``, ``model_name``, ``dataset_args``). ``blocking`` is
    accepted for Trainer compatibility; the push always completes before returning. Only the main process
    pushes; other ranks return None. Models sharded by ZeRO-3 or FSDP are refused (gather them first).
    """
    if not trainer.is_world_process_zero():
        return None
    sharding = _is_sharded(trainer)
    if sharding:
        raise NotImplementedError(
            f"push_trainer_to_hub reads the full weights from the model, which {sharding} shards across ranks; "
            "save a gathered copy with trainer.save_model(folder), load it with from_pretrained, and push that "
            "with hf_junkdna.push_pruned_to_hub(model, repo_id, masks=...)"
        )
    masks = masks if masks is not None else getattr(trainer, "masks", None)
    if not isinstance(masks, MaskSet):
        raise ValueError(
            "push_trainer_to_hub needs the pruning mask: the trainer has no `masks` MaskSet; pass masks=..."
        )
    args = trainer.args
    # the trainer's resolved regime first: SparseTrainer(regime=...) overrides args.regime, whose default is "dense"
    regime = (
        regime or getattr(trainer, "regime", None) or getattr(args, "regime", None) or masks.metadata.get("regime")
    )
    repo_id = repo_id or getattr(args, "hub_model_id", None) or Path(args.output_dir).name
    token = token if token is not None else getattr(args, "hub_token", None)
    private = private if private is not None else getattr(args, "hub_private_repo", None)
    revision = revision if revision is not None else getattr(args, "hub_revision", None)
    model = trainer.accelerator.unwrap_model(trainer.model)
    save_kwargs = card_kwargs_from_trainer(save_kwargs, getattr(model, "model_tags", None))
    save_kwargs.setdefault("tokenizer", getattr(trainer, "processing_class", None))
    save_kwargs.setdefault("command", default_command() or None)
    return push_pruned_to_hub(
        model,
        repo_id,
        masks,
        token=token,
        private=private,
        commit_message=commit_message,
        revision=revision,
        regime=regime,
        **save_kwargs,
    )
