"""Several processes against one: lesson 1's `fine_tune` through fastai's distributed engine, as `course ddp` trains it.

For each process count N, torchrun starts N processes that each run `course_utils.distributed.train_cats_and_dogs`
with a timer around the training; the first process writes how long `fine_tune` took, how many pictures it went
through, and the error rate all processes measured together. Reported for each N: seconds, training images/s, and
the scaling efficiency (images/s with N processes over N times images/s with one). On GPUs each process has a GPU
of its own (default: 1 and every GPU); without GPUs each process has one CPU core of its own (default: 1 and 2).

    .venv/bin/python bench/bench_distributed.py [--procs 1,2,4] [--fast] [--epochs 1] [--quick] [--out DIR]

`--quick` trains on the offline samples (the suite runs it on two CPU processes); otherwise lesson 1's data set is
used as the lesson gets it (the real one when it is cached or downloadable). Writes bench_distributed.{json,md}
into bench/results/, or into `--out`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import RESULTS_DIR, Stopwatch, ratio, write_report


def worker(out: Path, fast: bool, epochs: int):
    "One process of a run: train with a stopwatch around every `fit`, and have the first process write what it saw."
    import torch
    from fastai.callback.core import Callback
    from course_utils.distributed import train_cats_and_dogs

    class Timer(Callback):
        order = -100  # before every other callback's work on the fit
        seconds, images = 0.0, 0
        def before_fit(self): self.watch = Stopwatch('cuda' if torch.cuda.is_available() else 'cpu').start()
        def after_fit(self):
            Timer.seconds += self.watch.stop()
            Timer.images += self.n_epoch * len(self.dls.train_ds)  # every process's share together

    learn = train_cats_and_dogs(fast, epochs, cbs=[Timer()])
    if int(os.environ.get('RANK', 0)) == 0:
        out.write_text(json.dumps({'seconds': Timer.seconds, 'images': Timer.images,
                                   'error_rate': float(learn.recorder.values[-1][-1])}))


def run(procs: int, fast: bool, epochs: int, quick: bool, work: Path) -> dict:
    "Train in `procs` processes started by torchrun; what the first process measured."
    import torch
    out = work / f'procs-{procs}.json'
    env = dict(os.environ, **({'COURSE_SAMPLE': '1'} if quick else {}))
    if not torch.cuda.is_available(): env['OMP_NUM_THREADS'] = '1'  # one core per process, as one GPU per process
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc-per-node={procs}', __file__,
           '--worker', str(out), '--epochs', str(epochs), *(['--fast'] if fast else [])]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode: raise RuntimeError(f'{procs} processes failed (exit {done.returncode}):\n{done.stderr[-3000:]}')
    r = json.loads(out.read_text())
    return {'procs': procs, **r, 'images_per_s': r['images'] / r['seconds']}


def table(rows: list[dict], device: str, fast: bool, quick: bool) -> str:
    one = next((r for r in rows if r['procs'] == 1), None)
    lines = [f"Lesson 1's `fine_tune` ({'FastImageDataLoaders' if fast else 'ImageDataLoaders'}, "
             f"{'offline sample' if quick else 'the data lesson 1 gets'}) in N processes, one per {device}.", '',
             '| processes | seconds | training images/s | scaling efficiency | error rate |', '|---:|---:|---:|---:|---:|']
    for r in rows:
        eff = f"{ratio(r['images_per_s'], r['procs'] * one['images_per_s']):.0%}" if one else '—'
        lines.append(f"| {r['procs']} | {r['seconds']:.1f} | {r['images_per_s']:.1f} | {eff} | {r['error_rate']:.4f} |")
    return '\n'.join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--procs', help='process counts, comma-separated (default: 1 and every GPU, or 1,2 without GPUs)')
    ap.add_argument('--fast', action='store_true', help="the course's FastImageDataLoaders instead of fastai's")
    ap.add_argument('--epochs', type=int, default=1, help='for fine_tune')
    ap.add_argument('--quick', action='store_true', help='train on the offline samples')
    ap.add_argument('--out', type=Path, default=RESULTS_DIR, help='the folder for the results')
    ap.add_argument('--worker', type=Path, help=argparse.SUPPRESS)  # set by torchrun's processes
    a = ap.parse_args()
    if a.worker: return worker(a.worker, a.fast, a.epochs)
    import torch
    gpus = torch.cuda.device_count()
    procs = [int(p) for p in a.procs.split(',')] if a.procs else sorted({1, gpus if gpus > 1 else 2})
    with tempfile.TemporaryDirectory() as d:
        rows = [run(n, a.fast, a.epochs, a.quick, Path(d)) for n in procs]
    device = 'GPU' if gpus else 'CPU core'
    write_report(a.out, 'bench_distributed', {'device': device, 'fast': a.fast, 'quick': a.quick, 'rows': rows},
                 table(rows, device, a.fast, a.quick), markdown_file=True)


if __name__ == '__main__':
    main()
