"""Q6c: force accelerate's FSDP2 on a MULTI_CPU (gloo) run through the real Trainer, to get FSDP checkpoints
(optimizer included) and resume_from_checkpoint. The patch: a Trainer subclass that, after the Accelerator is
built, puts back the FSDP plugin that accelerate dropped for MULTI_CPU (accelerate 1.15 state.py only keeps it for
MULTI_GPU/NPU/XPU/...). TEST-ONLY; label tests that use it "FSDP2 forced on CPU".
torchrun --nproc_per_node 2 p7_fsdp2_accel.py [--mode pos|neg]
"""

import argparse

import common as C
import torch
import torch.distributed as dist
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from common import log
from datasets import Dataset
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
from transformers import Trainer, TrainerCallback, TrainingArguments

ap = argparse.ArgumentParser()
ap.add_argument("--mode", default="pos")
a = ap.parse_args()


class ForcedFSDP2Trainer(Trainer):
    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        st = self.accelerator.state
        if st.distributed_type == DistributedType.MULTI_CPU and self.args.fsdp_plugin_args is not None:
            st.distributed_type = DistributedType.FSDP
            st.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
            self.is_fsdp_enabled = True


def rows(p):
    shape, off = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    return off[0], shape[0]


model = C.tiny_llama()
names = C.prunable_names(model)
masks = {n: C.make_mask(n, p.shape) for n, p in model.named_parameters() if n in names}
with torch.no_grad():
    for n, p in model.named_parameters():
        if n in masks:
            p.mul_(masks[n])


class Cb(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kw):
        inner = optimizer.optimizer
        P = dict(model.named_parameters())
        log(
            f"model {type(model).__name__}; {names[0]}: {type(P[names[0]]).__name__} "
            f"{getattr(P[names[0]], 'placements', None)}; optimizer {type(optimizer).__name__}.{type(inner).__name__}"
        )
        self.begin_bad = sum(int((P[n].full_tensor() != 0)[~masks[n]].sum()) for n in names)
        if a.mode != "pos":
            return
        local = {}
        for n in names:
            o, r = rows(P[n])
            local[n] = masks[n][o : o + r]
            P[n].register_post_accumulate_grad_hook(lambda q, n=n: q.grad.to_local().mul_(local[n]))
        by_id = {id(P[n]): n for n in names}

        @torch.no_grad()
        def post(o, args_, kwargs):
            for g in o.param_groups:
                for q in g["params"]:
                    if id(q) in by_id:
                        q.to_local().mul_(local[by_id[id(q)]])

        inner.register_step_post_hook(post)


torch.manual_seed(0)
data = Dataset.from_list([{"input_ids": (i := torch.randint(0, 128, (16,)).tolist()), "labels": i} for _ in range(64)])
out = f"/tmp/dsprobe/out_fsdp2acc_{a.mode}"


def targs():
    return TrainingArguments(
        output_dir=out,
        use_cpu=True,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=4,
        learning_rate=1e-2,
        weight_decay=0.1,
        report_to=[],
        save_steps=2,
        disable_tqdm=True,
        fsdp="full_shard",
        fsdp_config={
            "version": 2,
            "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
            "state_dict_type": "SHARDED_STATE_DICT",
        },
    )


cb = Cb()
trainer = ForcedFSDP2Trainer(model=model, args=targs(), train_dataset=data, callbacks=[cb])
trainer.train()
P = dict(trainer.model.named_parameters())
W = {n: P[n].full_tensor() for n in names}
bad = sum(int((W[n] != 0)[~masks[n]].sum()) for n in names)
log(
    f"mode={a.mode} phase1: pruned non-zero {bad}; ckpt-2 files {sorted(__import__('os').listdir(out + '/checkpoint-2'))}"
)

model2 = C.tiny_llama(seed=5)
cb2 = Cb()
t2 = ForcedFSDP2Trainer(model=model2, args=targs(), train_dataset=data, callbacks=[cb2])
t2.train(resume_from_checkpoint=f"{out}/checkpoint-2")
P2 = dict(t2.model.named_parameters())
W2 = {n: P2[n].full_tensor() for n in names}
log(
    f"mode={a.mode} resume: pruned non-zero at train begin {cb2.begin_bad}, after {sum(int((W2[n] != 0)[~masks[n]].sum()) for n in names)}; "
    f"resumed == uninterrupted {all(torch.equal(W2[n], W[n]) for n in names)}"
)
dist.barrier()
dist.destroy_process_group()
