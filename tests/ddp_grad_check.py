"""Run by tests/test_distributed.py under torchrun (2 CPU processes, gloo): are the gradients
that DistributedDataParallel produces for each method's training step the right ones?

For every case, each rank takes its shard of one global batch and runs two training steps
twice, from identical weights and identical augmentation draws:

- "ddp": the model wrapped by :func:`camssl.train.ddp.wrap_ddp` (what the trainer does);
- "reference": the bare model, whose gradients are all-reduced and averaged by hand.

They must agree (the definition of data-parallel SGD), in both Grad-CAM gradient modes
(``full`` = double backward), at an autograd layer and at the closed-form layer. The
second step checks that DDP's reducer state carries over correctly between iterations
(the methods run several forwards per step).

A last case compares DDP with ONE process computing the whole global batch, with
BatchNorm in eval mode (so samples are independent): then the gradient of the global
batch must be reproduced, which is what "the global batch does not depend on the number
of processes" means. In train mode BatchNorm normalises each rank's share with its own
batch statistics, the one expected difference between W processes and one.

Writes the largest deviations to the JSON file named by argv[1] (rank 0).
"""

from __future__ import annotations

import copy
import json
import sys

import torch
import torch.distributed as dist

from camssl.augment import AugmentConfig, Augmenter
from camssl.config import method_config
from camssl.methods import METHODS, Batch, StepContext
from camssl.models import build_model
from camssl.train.ddp import wrap_ddp

CASES = {
    "supervised": method_config("supervised"),
    "pseudo_label": method_config("pseudo_label"),
    "gradcam_full_layer3": method_config("gradcam", gradcam={"layers": ["layer3"], "grad_mode": "full"}),
    "gradcam_detach_layer3": method_config("gradcam", gradcam={"layers": ["layer3"], "grad_mode": "detach-weights"}),
    "gradcam_full_layer4_closed_form": method_config("gradcam", gradcam={"layers": ["layer4", "layer2"],
                                                                         "grad_mode": "full"}),
    # L_G on FixMatch (threshold 0: every unlabeled image counts, so L_U and L_G reach the gradient)
    "fixmatch_gradcam_full_layer3": method_config("fixmatch", pseudo={"threshold": 0.0},
                                                  gradcam={"weight": 1.0, "layers": ["layer3"], "grad_mode": "full"}),
}


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    n = 8 * world  # global batch
    x_l = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y_l = torch.randint(0, 10, (n,), generator=g)
    x_u = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y_u = torch.randint(0, 10, (n,), generator=g)
    shard = slice(rank, None, world)
    batch = Batch(x_l[shard], y_l[shard], x_u[shard], y_u[shard])
    augmenter = Augmenter(AugmentConfig(), "cpu")
    report: dict[str, float] = {}

    def run(model, method, gen, manual_reduce: bool) -> list[list[torch.Tensor]]:
        params = list(model.parameters())
        opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
        grads = []
        for step in range(2):
            ctx = StepContext(model=model, augmenter=augmenter, generator=gen, epoch=float(step))
            out = method.step(ctx, batch)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            if manual_reduce:
                for p in params:
                    dist.all_reduce(p.grad)
                    p.grad /= world
            grads.append([p.grad.detach().clone() for p in params])
            opt.step()
        return grads

    for name, mcfg in CASES.items():
        torch.manual_seed(1)
        net = build_model("resnet18", 10, width=0.125).train()
        method = METHODS[mcfg.name](mcfg)
        gen = torch.Generator().manual_seed(100 + rank)
        start = gen.get_state()
        ref = run(copy.deepcopy(net), method, gen, manual_reduce=True)
        gen.set_state(start)
        got = run(wrap_ddp(copy.deepcopy(net), torch.device("cpu")), method, gen, manual_reduce=False)
        dev = max(
            float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
            for step_a, step_b in zip(got, ref)
            for a, b in zip(step_a, step_b)
        )
        report[name] = dev

    # one process with the whole batch vs W processes with a share each, BatchNorm in eval mode
    torch.manual_seed(1)
    net = build_model("resnet18", 10, width=0.125).eval()
    method = METHODS["supervised"](method_config("supervised"))
    whole = copy.deepcopy(net)
    ctx = StepContext(model=whole, augmenter=augmenter, generator=torch.Generator(), epoch=0.0, labeled_view="original")
    method.step(ctx, Batch(x_l, y_l)).loss.backward()
    ddp = wrap_ddp(copy.deepcopy(net), torch.device("cpu"))
    ctx = StepContext(model=ddp, augmenter=augmenter, generator=torch.Generator(), epoch=0.0, labeled_view="original")
    method.step(ctx, batch).loss.backward()
    report["global_batch_eval_bn"] = max(
        float((a.grad - b.grad).abs().max() / b.grad.abs().max().clamp_min(1e-12))
        for a, b in zip(ddp.module.parameters(), whole.parameters())
    )
    if rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(report, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
