"""Stock fastai images vs course_utils.fastimage, in one run: data-only speed, fine_tune(1) wall time,
the model-only ceiling, and final error rates, on synthetic photo-like JPEGs at Oxford-IIIT Pets scale.

    python bench/bench_fastimage.py                 # GPU if there is one; 7,390 images
    python bench/bench_fastimage.py --quick         # small CPU run (2 cores: a few minutes)

Writes bench_fastimage.json and bench_fastimage.md to --out (default bench/results/).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

PETS_IMAGES = 7390


# ---------------------------------------------------------------------------------------------- data
def _photo(i: int, seed: int) -> tuple[str, Image.Image]:
    "A photo-like picture whose class (cat: warm subject on light ground, dog: cool on dark) is learnable."
    rng = np.random.default_rng([seed, i])
    cat = i % 2 == 0
    w, h = (int(v) for v in rng.integers(300, 801, 2))
    def field(cells, spread):  # smooth random colour field, like out-of-focus background
        small = rng.standard_normal((cells, cells, 3), dtype=np.float32) * spread
        return np.asarray(Image.fromarray(np.clip(128 + small, 0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC), np.float32) - 128
    base = np.array((200, 190, 170) if cat else (60, 65, 80), np.float32) + rng.normal(0, 15, 3)
    img = base + field(6, 40) + field(40, 12)
    yy, xx = np.ogrid[0:h, 0:w]
    cx, cy, r = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h, rng.uniform(0.15, 0.3) * min(w, h)
    subject = ((xx - cx) / 1.3) ** 2 + (yy - cy) ** 2 < r ** 2
    colour = np.array((230, 120, 40) if cat else (60, 140, 230), np.float32) + rng.normal(0, 20, 3)
    img[subject] = 0.35 * img[subject] + 0.65 * colour
    img += rng.standard_normal((h, w, 3), dtype=np.float32) * 9  # sensor noise: files the size of real photos
    name = f"{'Cat' if cat else 'dog'}_{i}.jpg"
    return name, Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))

def _write(job):
    i, seed, folder = job
    name, img = _photo(i, seed)
    img.save(Path(folder) / name, 'JPEG', quality=90)

def make_images(n: int, seed: int, cache: Path, workers: int) -> Path:
    "Generate `n` JPEGs in parallel, once: a complete folder in `cache` is reused."
    folder = cache / f'fastimage-bench-{n}-{seed}'
    if (folder / '.complete').exists(): return folder
    folder.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(workers) as ex: list(ex.map(_write, [(i, seed, str(folder)) for i in range(n)], chunksize=16))
    (folder / '.complete').touch()
    return folder


# ------------------------------------------------------------------------------------------ measures
def is_cat(name): return name[0].isupper()

def sync(device):
    import torch
    if device.type == 'cuda': torch.cuda.synchronize(device)

def make_dls(files, folder, cfg, args, workers):
    from fastai.vision.all import ImageDataLoaders, Resize
    from course_utils.fastimage import FastImageDataLoaders
    cls = FastImageDataLoaders if cfg['fast'] else ImageDataLoaders
    # all cores: stock gets one worker per core (fastai's default, up to 16); the fast path is given no
    # number and picks its own (its workers only read files, so it starts few of them on a GPU)
    nw = None if cfg['fast'] and workers == 'all' else (min(16, os.cpu_count() or 1) if workers == 'all' else workers)
    return cls.from_name_func(folder, files, valid_pct=0.2, seed=42, label_func=is_cat, item_tfms=Resize(args.size),
                              bs=cfg['bs'], num_workers=nw, device=args.device)

def data_only(files, folder, cfg, args, workers) -> float:
    "Images per second out of the training loader (batches ready on the device), one pass, workers' start included."
    dls = make_dls(files, folder, cfg, args, workers)
    cfg.setdefault('workers_used', {})[str(workers)] = dls.train.fake_l.num_workers
    n, t0 = 0, time.perf_counter()
    for xb, yb in dls.train:
        n += len(yb)
    sync(args.device)
    return n / (time.perf_counter() - t0)

def fine_tune(files, folder, cfg, args, workers) -> dict:
    "Wall time of `fine_tune(1)` as lesson 1 runs it, the unfrozen epoch's training speed, and the final error rate."
    import torch
    from fastai.vision.all import Callback, error_rate, set_seed, vision_learner
    class TrainSpeed(Callback):
        order = 100
        def before_fit(self): self.speeds = getattr(self, 'speeds', [])
        def before_train(self): sync(args.device); self.n, self.t0 = 0, time.perf_counter()
        def after_batch(self):
            if self.training: self.n += len(self.yb[0])
        def after_train(self): sync(args.device); self.speeds.append(self.n / (time.perf_counter() - self.t0))
    set_seed(42)
    dls = make_dls(files, folder, cfg, args, workers)
    speed = TrainSpeed()
    learn = vision_learner(dls, args.arch_fn, metrics=error_rate, pretrained=False, cbs=speed)
    if cfg['precision'] != 'fp32' and args.device.type == 'cuda': learn.to_channelslast(amp_mode=cfg['precision'])
    with learn.no_logging(), learn.no_bar():
        sync(args.device); t0 = time.perf_counter()
        learn.fine_tune(1)
        sync(args.device); seconds = time.perf_counter() - t0
    return dict(seconds=seconds, train_img_s_unfrozen=speed.speeds[-1], error_rate=float(learn.recorder.values[-1][-1]))

def ceiling(cfg, args, steps: int, warmup: int) -> float:
    "Raw PyTorch training steps on batches already on the device: the same model, batch size and precision."
    import torch
    from fastai.vision.all import create_vision_model
    model = create_vision_model(args.arch_fn, 2, pretrained=False).to(args.device)
    cl = cfg['precision'] != 'fp32' and args.device.type == 'cuda'
    if cl: model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(cfg['bs'], 3, args.size, args.size, device=args.device)
    if cl: x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (cfg['bs'],), device=args.device)
    dtype = dict(bf16=torch.bfloat16, fp16=torch.float16).get(cfg['precision'])
    scaler = torch.amp.GradScaler(enabled=cfg['precision'] == 'fp16')
    def step():
        with torch.autocast(args.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward(); scaler.step(opt); scaler.update()
    for _ in range(warmup): step()
    sync(args.device); t0 = time.perf_counter()
    for _ in range(steps): step()
    sync(args.device)
    return steps * cfg['bs'] / (time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------- report
def ratio(a, b): return a / b if b else float('nan')

def markdown(res: dict) -> str:
    m, r = res['meta'], res['results']
    lines = [f"# Fast images vs stock fastai ({m['device_name']})", '',
             f"{m['n_images']} synthetic JPEGs ({m['mean_kb']:.0f} KB on average, {m['min_side']}-{m['max_side']} px), "
             f"{m['arch']} at {m['size']} px, {m['cpus']} CPU cores, torch {m['torch']}, torchvision {m['torchvision']}, "
             f"fastai {m['fastai']}. Stock: bs {m['stock']['bs']} {m['stock']['precision']}; "
             f"fast: bs {m['fast']['bs']} {m['fast']['precision']}{' channels_last' if m['fast']['precision'] != 'fp32' and m['device'] == 'cuda' else ''}.", '',
             '| measure | workers | stock | fast | fast / stock | goal |', '|---|---|---|---|---|---|']
    def wl(w, kind=None):
        if w != 'all': return str(w)
        return f"all ({m['stock']['workers_used']['all']} stock, {m['fast']['workers_used']['all']} fast)"
    for w in m['worker_counts']:
        s, f = r[f'stock_w{w}'], r[f'fast_w{w}']
        lines.append(f"| data only, images/s | {wl(w)} | {s['data_img_s']:.0f} | {f['data_img_s']:.0f} | {ratio(f['data_img_s'], s['data_img_s']):.2f}x | |")
    for w in m['worker_counts']:
        s, f = r[f'stock_w{w}'], r[f'fast_w{w}']
        goal = '>= 5x' if w == 2 else '>= 2.5x'
        sp = ratio(s['seconds'], f['seconds'])
        lines.append(f"| fine_tune(1), seconds | {wl(w)} | {s['seconds']:.1f} | {f['seconds']:.1f} | {sp:.2f}x faster | {goal} |")
    for w in m['worker_counts']:
        s, f = r[f'stock_w{w}'], r[f'fast_w{w}']
        lines.append(f"| final error_rate | {wl(w)} | {s['error_rate']:.4f} | {f['error_rate']:.4f} | | equal within noise |")
    c = r['ceiling']
    lines += ['', '| training speed, unfrozen epoch (images/s) | workers | pipeline | raw PyTorch ceiling | share of ceiling | goal |',
              '|---|---|---|---|---|---|']
    for w in m['worker_counts']:
        for kind, goal in (('stock', ''), ('fast', '>= 80%')):
            v = r[f'{kind}_w{w}']['train_img_s_unfrozen']
            lines.append(f"| {kind} (bs {m[kind]['bs']} {m[kind]['precision']}) | {wl(w)} | {v:.0f} | {c[kind]:.0f} | {ratio(v, c[kind]):.0%} | {goal} |")
    lines += ['', f"Total run time {m['total_s']:.0f} s (image generation {m['generate_s']:.0f} s)."]
    return '\n'.join(lines) + '\n'

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--n-images', type=int, default=None, help=f'images to generate (default {PETS_IMAGES}; --quick: 240)')
    p.add_argument('--device', default=None, help="'cuda', 'cpu' (default: cuda when available)")
    p.add_argument('--quick', action='store_true', help='small CPU-sized run: 240 images, resnet18 at 96 px')
    p.add_argument('--out', default=str(ROOT / 'bench' / 'results'), help='folder for the JSON and markdown tables')
    p.add_argument('--arch', default=None, help='torchvision architecture (default resnet34; --quick: resnet18)')
    p.add_argument('--size', type=int, default=None, help='image size (default 224; --quick: 128)')
    p.add_argument('--stock-bs', type=int, default=64)
    p.add_argument('--fast-bs', type=int, default=None, help='fast path batch size (default 128 on a GPU, else --stock-bs)')
    p.add_argument('--fast-precision', default=None, choices=['fp32', 'bf16', 'fp16'], help='default bf16 on a GPU, else fp32')
    p.add_argument('--data-images', type=int, default=2048, help='images per data-only pass')
    p.add_argument('--cache', default=tempfile.gettempdir(), help='where generated JPEGs are kept between runs')
    p.add_argument('--seed', type=int, default=42)
    args = p.parse_args(argv)

    t_start = time.perf_counter()
    import torch, torchvision, fastai
    from fastai.vision.all import get_image_files
    import fastai.vision.all as fv
    args.device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    gpu = args.device.type == 'cuda'
    n = args.n_images or (240 if args.quick else PETS_IMAGES)
    args.arch = args.arch or ('resnet18' if args.quick else 'resnet34')
    args.arch_fn = getattr(fv, args.arch)
    args.size = args.size or (96 if args.quick else 224)
    cpus = os.cpu_count() or 1
    worker_counts = [2] + (['all'] if cpus > 2 else [])  # on 2 cores, "all" is the same run again
    stock = dict(fast=False, bs=args.stock_bs, precision='fp32')
    fast = dict(fast=True, bs=args.fast_bs or (128 if gpu else args.stock_bs), precision=args.fast_precision or ('bf16' if gpu else 'fp32'))
    if gpu: torch.backends.cudnn.benchmark = True  # for every configuration alike

    t0 = time.perf_counter()
    folder = make_images(n, args.seed, Path(args.cache), cpus)
    generate_s = time.perf_counter() - t0
    files = get_image_files(folder)
    sizes = [Image.open(f).size for f in files[:200]]
    print(f"{len(files)} images in {folder} ({generate_s:.0f} s)", flush=True)

    results = {}
    steps, warmup = (20, 5) if gpu else (3, 1)
    results['ceiling'] = {k: ceiling(c, args, steps, warmup) for k, c in (('stock', stock), ('fast', fast))}
    print('ceiling', results['ceiling'], flush=True)
    for w in worker_counts:
        for kind, cfg in (('stock', stock), ('fast', fast)):
            key = f'{kind}_w{w}'
            data = data_only(files[:args.data_images], folder, cfg, args, w)
            results[key] = dict(data_img_s=data, **fine_tune(files, folder, cfg, args, w))
            print(key, results[key], flush=True)

    meta = dict(n_images=len(files), mean_kb=float(np.mean([f.stat().st_size for f in files])) / 1024,
                min_side=min(min(s) for s in sizes), max_side=max(max(s) for s in sizes), arch=args.arch, size=args.size,
                device=args.device.type, device_name=torch.cuda.get_device_name(args.device) if gpu else f'CPU, {cpus} cores',
                cpus=cpus, worker_counts=worker_counts, stock=stock, fast=fast, torch=torch.__version__,
                torchvision=torchvision.__version__, fastai=fastai.__version__, generate_s=generate_s,
                total_s=time.perf_counter() - t_start)
    res = dict(meta=meta, results=results)
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    (out / 'bench_fastimage.json').write_text(json.dumps(res, indent=2))
    md = markdown(res)
    (out / 'bench_fastimage.md').write_text(md)
    print(md)

if __name__ == '__main__':
    main()
