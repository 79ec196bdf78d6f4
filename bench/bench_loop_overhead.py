"""Host time per training step: a plain PyTorch loop, fastai's `Learner.fit` as it comes, and with
`course_utils.training`'s settings, measured in one run on the CPU.

On a GPU, Python only queues the kernels of a step; the GPU runs them later. Whether a training loop
can keep a GPU busy depends on how long Python takes to queue one step (the "host time") against how
long the GPU takes to run it. This script measures the host time where there is no GPU: the model is
a "thin" ResNet-34 (every layer of the real one, with 1/32 of its channels), so that the CPU's
arithmetic is small and what is left is the per-layer and per-step Python that a GPU run pays too.
A second table times the loops around a one-layer model: the fixed cost of a step, whatever the model.

    .venv/bin/python bench/bench_loop_overhead.py            # about a minute on 2 cores

Writes bench_loop_overhead.json to --out (default bench/results/) and prints a table.
"""
from __future__ import annotations

import argparse
import statistics
import warnings

import torch
from torch import nn
import torch.nn.functional as F
import torchvision.models.resnet as tv_resnet

from benchlib import RESULTS_DIR, ratio, resident_dls, seconds_per_call, step_timer, write_report


def thin_resnet34(width_divisor: int = 32) -> nn.Module:
    "torchvision's ResNet-34 layer for layer, with every channel count divided by `width_divisor` (the 3 input channels kept)."
    class Conv(nn.Conv2d):
        def __init__(self, c_in, c_out, *args, **kwargs):
            super().__init__(c_in if c_in == 3 else max(1, c_in // width_divisor), max(1, c_out // width_divisor), *args, **kwargs)
    class BatchNorm(nn.BatchNorm2d):
        def __init__(self, n, *args, **kwargs): super().__init__(max(1, n // width_divisor), *args, **kwargs)
    class ThinLayers:  # torchvision's resnet module builds its layers from `nn.<name>`
        def __getattr__(self, name): return {'Conv2d': Conv, 'BatchNorm2d': BatchNorm}.get(name) or getattr(nn, name)
    real_nn, tv_resnet.nn = tv_resnet.nn, ThinLayers()
    try: return tv_resnet.ResNet(tv_resnet.BasicBlock, [3, 4, 6, 3])
    finally: tv_resnet.nn = real_nn


def model():
    from fastai.vision.all import create_vision_model, set_seed
    set_seed(0)
    return create_vision_model(lambda pretrained=False, **kw: thin_resnet34(), 2, pretrained=False)


def one_layer():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 2))


def raw_ms(x, y, steps: int, warmup: int, make_model=model) -> float:
    "Milliseconds per step of a plain loop: forward, loss, backward, PyTorch AdamW."
    m = make_model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    def step():
        loss = F.cross_entropy(m(x), y)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    for _ in range(warmup): step()
    return seconds_per_call(step, steps) * 1000


def fastai_ms(x, y, steps: int, warmup: int, fast: bool, make_model=model) -> float:
    "Milliseconds per step of fastai's `Learner.fit` (with its progress bar, as a lesson runs it) on one batch served again and again."
    from fastai.vision.all import CrossEntropyLossFlat, Learner, TensorCategory, TensorImage
    from course_utils.training import KeepLossOnDevice, LazyLossProgress, torch_adamw
    dls = resident_dls(TensorImage(x), TensorCategory(y), warmup + steps, 'cpu')
    timer = step_timer(warmup)
    learn = Learner(dls, make_model(), loss_func=CrossEntropyLossFlat(), cbs=timer)
    if fast:  # what `fast_training` does on a GPU, less bf16 and channels_last, which the CPU does not run alike
        learn.opt_func = torch_adamw
        learn.add_cb(KeepLossOnDevice())
        learn.remove_cb(learn.progress).add_cb(LazyLossProgress())
    with learn.no_logging(): learn.fit(1)
    return timer.seconds / timer.steps * 1000


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--bs', type=int, default=8)
    p.add_argument('--size', type=int, default=32)
    p.add_argument('--steps', type=int, default=150)
    p.add_argument('--repeats', type=int, default=3, help='each loop is measured this many times, interleaved; medians are reported')
    p.add_argument('--out', default=str(RESULTS_DIR))
    args = p.parse_args(argv)
    warnings.filterwarnings('ignore')
    torch.set_num_threads(1)  # one core: less noise from the other jobs on a shared machine
    warmup = 10
    def measure(x, y, steps, make_model):
        "Each loop `args.repeats` times, interleaved: the times and their medians."
        loops = {'raw PyTorch (AdamW)': lambda: raw_ms(x, y, steps, warmup, make_model),
                 'fastai as it comes': lambda: fastai_ms(x, y, steps, warmup, fast=False, make_model=make_model),
                 'fastai with the fast settings': lambda: fastai_ms(x, y, steps, warmup, fast=True, make_model=make_model)}
        runs = {name: [] for name in loops}
        for _ in range(args.repeats):
            for name, run in loops.items(): runs[name].append(run())
        return runs, {name: statistics.median(v) for name, v in runs.items()}
    def table(title, ms):
        raw = ms['raw PyTorch (AdamW)']
        return [title, '', '| loop | ms per step | / raw PyTorch |', '|---|---|---|'] + [
            f"| {name} | {v:.2f} | {ratio(v, raw):.2f}x |" for name, v in ms.items()] + ['']
    torch.manual_seed(0)
    runs, ms = measure(torch.randn(args.bs, 3, args.size, args.size), torch.randint(0, 2, (args.bs,)), args.steps, model)
    fixed_steps = 10 * args.steps
    fixed_runs, fixed_ms = measure(torch.randn(4, 8), torch.randint(0, 2, (4,)), fixed_steps, one_layer)
    params = sum(p.numel() for p in model().parameters())
    lines = table(f"Host time per training step on the CPU: thin ResNet-34 ({params:,} parameters), bs {args.bs}, {args.size} px, "
                  f"{args.steps} steps, median of {args.repeats}", ms)
    lines += table(f"The loop alone: one linear layer, bs 4, {fixed_steps} steps, median of {args.repeats}", fixed_ms)
    write_report(args.out, 'bench_loop_overhead', dict(args=vars(args), params=params, runs_ms=runs, median_ms=ms,
                                                       one_layer=dict(steps=fixed_steps, runs_ms=fixed_runs, median_ms=fixed_ms)), '\n'.join(lines))

if __name__ == '__main__':
    main()
