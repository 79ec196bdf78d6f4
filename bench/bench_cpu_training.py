"""CPU training throughput: stock fastai vs the settings `setup_course()` applies (channels-last, bf16 autocast).

    .venv/bin/python bench/bench_cpu_training.py [--arch resnet34] [--size 224] [--bs 64] [--batches 6]

Trains a vision learner on synthetic in-memory batches (no decoding, so only the model's speed is
measured), once with fastai's defaults and once with `CPUSpeedup`, in the same process, and prints
training images/s for each and their ratio.
"""
from __future__ import annotations

import argparse
import time

import torch
from fastai.callback.core import Callback
from fastai.vision.all import DataLoaders, Learner, CrossEntropyLossFlat, create_vision_model, resnet18, resnet34, resnet50
from torch.utils.data import TensorDataset, DataLoader

from course_utils.core import CPUSpeedup, cpu_bf16_supported

ARCHS = {'resnet18': resnet18, 'resnet34': resnet34, 'resnet50': resnet50}


def images_per_second(arch, size: int, bs: int, batches: int, fast: bool) -> float:
    torch.manual_seed(0)
    x = torch.randn(bs * (batches + 1), 3, size, size)
    y = torch.randint(0, 2, (len(x),))
    dl = DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=False)
    dls = DataLoaders(dl, DataLoader(TensorDataset(x[:bs], y[:bs]), batch_size=bs), device='cpu')
    model = create_vision_model(arch, 2, pretrained=False)
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), cbs=[CPUSpeedup()] if fast else [])
    times = []

    class Timer(Callback):
        def before_batch(self):
            if self.training: self.t0 = time.perf_counter()
        def after_step(self): times.append(time.perf_counter() - self.t0)

    learn.add_cb(Timer())
    with learn.no_bar(): learn.fit(1, 1e-3)
    steady = times[1:]  # the first step pays for one-off allocations
    return bs * len(steady) / sum(steady)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--arch', default='resnet34', choices=ARCHS)
    ap.add_argument('--size', type=int, default=224)
    ap.add_argument('--bs', type=int, default=64)
    ap.add_argument('--batches', type=int, default=6)
    a = ap.parse_args()
    stock = images_per_second(ARCHS[a.arch], a.size, a.bs, a.batches, fast=False)
    ours = images_per_second(ARCHS[a.arch], a.size, a.bs, a.batches, fast=True)
    print(f"{a.arch} @ {a.size}px, batch {a.bs}, {torch.get_num_threads()} threads, bf16 on this CPU: {cpu_bf16_supported()}")
    print(f"| setting | training images/s |\n|---|---|\n| stock fastai | {stock:.1f} |\n| CPUSpeedup | {ours:.1f} |")
    print(f"ratio: {ours / stock:.2f}x")


if __name__ == '__main__':
    main()
