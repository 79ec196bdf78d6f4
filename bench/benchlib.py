"""What the benchmarks share: timing that waits for the device, ratios, where results go, fastai loaders
that serve one resident batch, and a headless Chromium that reaches only this machine.

The scripts import the installed package (`pip install -e .`, as the quick start does) and this module
from their own folder; torch, fastai and Playwright are imported where they are used, so `--help` is quick.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS_DIR = BENCH / 'results'


# -------------------------------------------------------------------------------------------- timing
def sync(device='cpu'):
    "Wait until a GPU has run what Python queued for it: a timing that ends before that leaves the work out."
    import torch
    if torch.device(device).type == 'cuda': torch.cuda.synchronize(device)

class Stopwatch:
    "`seconds` from `start()` to `stop()` (or across a `with` block), with `device` synchronised at both ends."
    def __init__(self, device='cpu'): self.device = device
    def start(self):
        sync(self.device); self.t0 = time.perf_counter()
        return self
    def stop(self) -> float:
        sync(self.device); self.seconds = time.perf_counter() - self.t0
        return self.seconds
    def __enter__(self): return self.start()
    def __exit__(self, *exc): self.stop()

def call_times(f, n: int, warmup: int = 0, device='cpu') -> list[float]:
    "Seconds of each of `n` calls of `f`, after `warmup` calls that are not timed (caches, one-off allocations)."
    for _ in range(warmup): f()
    watch, times = Stopwatch(device), []
    for _ in range(n):
        with watch: f()
        times.append(watch.seconds)
    return times

def seconds_per_call(f, n: int, device='cpu') -> float:
    "Mean seconds of `n` calls of `f` timed as one run: what a loop of them costs, queued work included."
    with Stopwatch(device) as watch:
        for _ in range(n): f()
    return watch.seconds / n

def step_timer(warmup: int, device='cpu', during=None):
    "A fastai callback that times the training steps of a `fit` after its first `warmup` ones: `seconds` and `steps` after the epoch; `during()`, a context that those steps run in."
    from fastai.callback.core import Callback
    class StepTimer(Callback):
        order = 100  # after the other callbacks' work on a batch, which is part of a step
        def after_batch(self):
            if not (self.training and self.iter == warmup - 1): return
            self.watch, self.context = Stopwatch(device).start(), contextlib.ExitStack()
            if during is not None: self.context.enter_context(during())
        def after_train(self):
            self.context.close()
            self.seconds, self.steps = self.watch.stop(), self.n_iter - warmup
    return StepTimer()

def ratio(a, b): return a / b if b else float('nan')


# ------------------------------------------------------------------------------------------- results
def write_report(out, name: str, result: dict, table: str, markdown_file: bool = False):
    "Print `table`; write `result` to `out/<name>.json`, and with `markdown_file` the table to `out/<name>.md`."
    out = Path(out); out.mkdir(parents=True, exist_ok=True)
    (out / f'{name}.json').write_text(json.dumps(result, indent=2))
    if markdown_file: (out / f'{name}.md').write_text(table)
    print(table)


# ---------------------------------------------------------------------------------------- fastai loop
def resident_dls(x, y, n_batches: int, device):
    "fastai DataLoaders whose training loader serves the batch (x, y) `n_batches` times, with no loader work at all."
    from fastai.vision.all import DataLoader, DataLoaders
    class Resident(DataLoader):
        def __iter__(self):
            for _ in range(len(self)): yield x, y
    return DataLoaders(Resident(range(n_batches), bs=1), Resident(range(1), bs=1), device=device)


# ------------------------------------------------------------------------------------------- browser
# The app tests keep their own copy of these three settings in tests/browser.py: neither folder imports the other.
CHROMIUM = os.environ.get('CHROMIUM_PATH', '/usr/bin/chromium')
CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']
NOT_LOOPBACK = re.compile(r'^https?://(?!127\.0\.0\.1[:/])')

@contextlib.asynccontextmanager
async def loopback_chromium(profile: Path):
    "A headless Chromium context (Playwright, async) with a fresh `profile` folder, whose pages may reach 127.0.0.1 and nothing else."
    from playwright.async_api import async_playwright
    async with async_playwright() as p:
        ctx = await p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        await ctx.route(NOT_LOOPBACK, lambda route: route.abort())
        try: yield ctx
        finally: await ctx.close()
