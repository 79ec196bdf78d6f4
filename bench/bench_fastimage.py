"""Stock fastai images vs course_utils.fastimage, in one run: data-only speed, fine_tune(1) wall time,
the model-only ceiling, and final error rates, on synthetic photo-like JPEGs at Oxford-IIIT Pets scale.

    .venv/bin/python bench/bench_fastimage.py                  # GPU if there is one; 7,390 images
    .venv/bin/python bench/bench_fastimage.py --quick          # small CPU run (2 cores: a few minutes)
    .venv/bin/python bench/bench_fastimage.py --check-settings # each configuration's learner settings, as JSON

Writes bench_fastimage.json and bench_fastimage.md to --out (default bench/results/).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from benchlib import RESULTS_DIR, Stopwatch, ratio, resident_dls, seconds_per_call, step_timer, write_report

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

def make_dls(files, folder, cfg, args, workers):
    from fastai.vision.all import ImageDataLoaders, Resize
    from course_utils.fastimage.data import FastImageDataLoaders
    cls = FastImageDataLoaders if cfg['fast'] else ImageDataLoaders
    # all cores: stock gets one worker per core (fastai's default, up to 16); the fast path is given no
    # number and picks its own (its workers only read files, so it starts few of them on a GPU)
    nw = None if cfg['fast'] and workers == 'all' else (min(16, os.cpu_count() or 1) if workers == 'all' else workers)
    return cls.from_name_func(folder, files, valid_pct=0.2, seed=42, label_func=is_cat, item_tfms=Resize(args.size),
                              bs=cfg['bs'], num_workers=cfg.get('num_workers', nw), device=args.device, **cfg.get('dl_kwargs', {}))

def decoded_cache(dl):
    "The decoded-image cache of a fast loader; None for a stock loader or a fast one without a cache."
    return getattr(getattr(dl, 'decoder', None), 'cache', None)

def data_only(files, folder, cfg, args, workers) -> dict:
    "Images per second out of the training loader (batches ready on the device), one pass, workers' start included; with a decoded-image cache, a second pass too (every epoch after the first)."
    dls = make_dls(files, folder, cfg, args, workers)
    cfg.setdefault('workers_used', {})[str(workers)] = dls.train.fake_l.num_workers
    def one_pass():
        n, watch = 0, Stopwatch(args.device).start()
        for xb, yb in dls.train: n += len(yb)
        return n / watch.stop()
    res = dict(data_img_s=one_pass())
    if decoded_cache(dls.train) is not None: res['data_img_s_cached'] = one_pass()
    return res

def apply_settings(learn, cfg, args):
    "The learner side of `cfg`: fastai as it comes (with mixed precision if asked), or `fast_training` (with PyTorch's fused AdamW if asked); and BatchNorm statistics refreshed if asked."
    from functools import partial
    from course_utils.training import RefreshBatchNormStats, fast_training, torch_adamw
    if cfg['training'] == 'fast': fast_training(learn, precision=cfg['precision'])
    elif cfg['precision'] != 'fp32' and args.device.type == 'cuda': learn.to_channelslast(amp_mode=cfg['precision'])
    if cfg.get('fused'): learn.opt_func = partial(torch_adamw, fused=True)  # one kernel for the whole update instead of several per group
    if cfg.get('refresh_bn'): learn.add_cb(RefreshBatchNormStats())
    return learn

def make_learner(dls, cfg, args, cbs=None):
    "Lesson 1's `vision_learner` (two classes, random weights) with the learner side of `cfg`."
    from fastai.vision.all import error_rate, vision_learner
    return apply_settings(vision_learner(dls, args.arch_fn, n_out=2, metrics=error_rate, pretrained=False, cbs=cbs), cfg, args)

def fine_tune(files, folder, cfg, args, workers) -> dict:
    "Wall time of `fine_tune(1)` as lesson 1 runs it, the unfrozen epoch's training speed, and the final error rate."
    from fastai.vision.all import Callback, set_seed
    class TrainSpeed(Callback):
        "Training images/s per epoch: over the whole epoch, and from the end of its first batch (workers started, shapes tuned)."
        order = -10  # its after_train before RefreshBatchNormStats's, whose forward passes are no training steps
        def before_fit(self): self.speeds, self.steady = getattr(self, 'speeds', []), getattr(self, 'steady', [])
        def before_train(self): self.n, self.epoch_watch, self.first, self.steady_watch = 0, Stopwatch(args.device).start(), None, None
        def after_batch(self):
            if not self.training: return
            self.n += len(self.yb[0])
            if self.first is None: self.first, self.steady_watch = self.n, Stopwatch(args.device).start()
        def after_train(self):
            self.speeds.append(self.n / self.epoch_watch.stop())
            steady = self.steady_watch is not None and self.n > self.first  # an epoch of one batch (or none) has no steady part
            self.steady.append((self.n - self.first) / self.steady_watch.stop() if steady else float('nan'))
    set_seed(42)
    dls = make_dls(files, folder, cfg, args, workers)
    speed = TrainSpeed()
    learn = make_learner(dls, cfg, args, cbs=speed)
    with learn.no_logging(), learn.no_bar():
        with Stopwatch(args.device) as watch: learn.fine_tune(1)
        seconds, checks = watch.seconds, error_checks(learn)
    cache = decoded_cache(dls.train)
    kept = dict(cache_hits=cache.hits, cache_misses=cache.misses, cache_gib=cache.nbytes / 2**30) if cache is not None else {}
    return dict(seconds=seconds, train_img_s_unfrozen=speed.speeds[-1], train_img_s_unfrozen_steady=speed.steady[-1],
                error_rate=float(learn.recorder.values[-1][-1]), **checks, **kept)

def error_checks(learn) -> dict:
    "The validation error again without mixed precision, then with BatchNorm on batch statistics: where a bad error comes from."
    from torch import nn
    from fastai.vision.all import Callback
    class BatchStatsBN(Callback):
        order = 100  # after fastai puts the model in eval mode
        def before_validate(self):
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm): m.train()
    res = {}
    if hasattr(learn, 'mixed_precision'):
        with learn.removed_cbs(learn.mixed_precision): res['error_rate_fp32_eval'] = float(learn.validate()[1])
    with learn.added_cbs(BatchStatsBN()): res['error_rate_batch_stats'] = float(learn.validate()[1])  # changes BN stats: last
    return res

@contextlib.contextmanager
def sync_warnings():
    "CUDA's sync-warning mode: whatever makes Python wait for the GPU warns while it lasts."
    import torch
    torch.cuda.set_sync_debug_mode('warn')
    try: yield
    finally: torch.cuda.set_sync_debug_mode('default')

def _loop_learner(cfg, args, steps: int, warmup: int, audit: bool = False):
    "A learner whose `fit(1)` runs fastai's loop on one batch already on the device, again and again (no loader work at all), and the `step_timer` of the steps after `warmup`; with `audit`, those steps run in CUDA's sync-warning mode."
    import torch
    from fastai.vision.all import CrossEntropyLossFlat, Learner, create_vision_model
    size = cfg.get('size', args.size)
    x = torch.randn(cfg['bs'], 3, size, size, device=args.device)
    y = torch.randint(0, 2, (cfg['bs'],), device=args.device)
    timer = step_timer(warmup, args.device, during=sync_warnings if audit else None)
    dls = resident_dls(x, y, warmup + steps, args.device)
    cfg = {**cfg, 'refresh_bn': False}  # the training steps alone
    return apply_settings(Learner(dls, create_vision_model(args.arch_fn, 2, pretrained=False), loss_func=CrossEntropyLossFlat(),
                                  cbs=timer), cfg, args), timer

def fastai_loop(cfg, args, steps: int, warmup: int) -> float:
    "fastai's `Learner.fit` on one batch already on the device, served again and again: images/s."
    learn, timer = _loop_learner(cfg, args, steps, warmup)
    with learn.no_logging(), learn.no_bar(): learn.fit(1)
    return timer.steps * cfg['bs'] / timer.seconds

def fastai_loop_syncs(cfg, args, steps: int, warmup: int) -> dict:
    "Where fastai's loop makes Python wait for the GPU: call sites and how often per step (CUDA only)."
    import traceback, warnings
    learn, _ = _loop_learner(cfg, args, steps, warmup, audit=True)
    sites = {}
    def record(message, category, filename, lineno, file=None, line=None):
        if 'synchroniz' not in str(message): return
        where = ' <- '.join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in traceback.extract_stack()[-8:-2][::-1])
        sites[where] = sites.get(where, 0) + 1
    with warnings.catch_warnings():
        warnings.simplefilter('always')
        warnings.showwarning = record
        with learn.no_logging(), learn.no_bar(): learn.fit(1)
    return {where: n / steps for where, n in sorted(sites.items(), key=lambda kv: -kv[1])}

def encoded_batches(files, cfg, args, n_batches: int, split_idx: int = 1) -> list:
    "`n_batches` batches of the first files as the fast loader's workers hand them over (bytes, and crop plans drawn as for `split_idx`: 1 validation, 0 training), for its decoder."
    from fastai.vision.all import Resize
    from course_utils.fastimage.core import ReadImage, plan_crop
    from course_utils.fastimage.data import EncodedBatch
    bs, read = cfg['bs'], ReadImage()
    images = [read(f) for f in files[:bs * n_batches]]
    plans = [plan_crop(Resize(args.size), im.size, split_idx) for im in images]
    return [EncodedBatch(images[i:i + bs], plans[i:i + bs], args.device) for i in range(0, len(images) - bs + 1, bs)]

def cached_training_batches(files, cfg, args, n_batches: int) -> tuple:
    "Training batches (random crops) and a `DecodedCache` that a first pass over them has filled, as every epoch after the first finds it."
    from course_utils.fastimage.cache import DecodedCache
    batches, cache = encoded_batches(files, cfg, args, n_batches, split_idx=0), DecodedCache(2**40)
    for b in batches: b.decode(cache)
    return batches, cache

def decode_capacity(files, cfg, args, n_batches: int = 12) -> dict:
    "What one decode thread can deliver with nothing else running (images/s): nvJPEG alone, then with the crops and resizes, then training crops from a `DecodedCache` (every epoch after the first)."
    from course_utils.fastimage.core import decode_jpegs
    bs, batches = cfg['bs'], encoded_batches(files, cfg, args, n_batches + 1)
    train, cache = cached_training_batches(files, cfg, args, n_batches + 1)
    batches[0].decode()  # warm-up: decoder state, kernels
    res = {}
    for name, work, todo in (('decode', lambda b: decode_jpegs([b.blob[slice(*s)] for s in b.slots], args.device), batches[1:]),
                             ('decode_crop_resize', lambda b: b.decode(), batches[1:]),
                             ('training_crops_from_cache', lambda b: b.decode(cache), train[1:])):
        with Stopwatch(args.device) as watch:
            for b in todo: work(b)
        res[name] = len(todo) * bs / watch.seconds
    return res

class DecodingAlongside:
    "While active, a thread makes batches on its own CUDA stream as the fast loader does (with `cached`: training crops from a `DecodedCache`, as in every epoch after the first), at most `ahead` batches ahead of the steps that `taken()` reports, as the loader's queue keeps it; `img_s`: how fast it went."
    def __init__(self, files, cfg, args, n_batches: int = 8, cached: bool = False, ahead: int = 2):
        self.device, self.ahead = args.device, ahead
        self.batches, self.cache = cached_training_batches(files, cfg, args, n_batches) if cached else (encoded_batches(files, cfg, args, n_batches), None)

    def taken(self): self.room.release()  # a training step used a batch: make another

    def _work(self):
        import contextlib, itertools, torch
        with torch.cuda.stream(torch.cuda.Stream(self.device)) if self.device.type == 'cuda' else contextlib.nullcontext():
            for b in itertools.cycle(self.batches):
                while not self.room.acquire(timeout=0.1):
                    if self.stop.is_set(): return
                if self.stop.is_set(): return
                b.decode(self.cache); self.n += len(b)

    def __enter__(self):
        import threading
        self.stop, self.room, self.n = threading.Event(), threading.Semaphore(self.ahead), 0
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.watch = Stopwatch().start(); self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set(); self.thread.join()
        self.img_s = self.n / self.watch.stop()

def ceilings_with_decoding(files, cfg, args, steps: int, warmup: int) -> dict:
    "The raw loop while a thread decodes a batch for each of its steps on the same GPU, then while it makes training crops from a cache (images/s of each)."
    res = {}
    for key, thread_key, cached in (('fast', 'decode_img_s', False), ('fast_cached', 'render_img_s', True)):
        with DecodingAlongside(files, cfg, args, cached=cached) as thread: res[key] = ceiling(cfg, args, steps, warmup, alongside=thread)
        res[thread_key] = thread.img_s
    return res

def ceiling(cfg, args, steps: int, warmup: int, alongside=None) -> float:
    "Raw PyTorch training steps on batches already on the device: the same model, batch size and precision; `alongside`: a context to run them in."
    import torch
    from fastai.vision.all import create_vision_model
    model = create_vision_model(args.arch_fn, 2, pretrained=False).to(args.device)
    cl = cfg['precision'] != 'fp32' and args.device.type == 'cuda'
    if cl: model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=cfg.get('fused'))
    size = cfg.get('size', args.size)
    x = torch.randn(cfg['bs'], 3, size, size, device=args.device)
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
    if alongside is None: return cfg['bs'] / seconds_per_call(step, steps, args.device)
    def step_and_tell(): step(); alongside.taken()
    with alongside: return cfg['bs'] / seconds_per_call(step_and_tell, steps, args.device)


# ------------------------------------------------------------------------------------------- report
def markdown(res: dict) -> str:
    m, r = res['meta'], res['results']
    lines = [f"# Fast images vs stock fastai ({m['device_name']})", '',
             f"{m['n_images']} synthetic JPEGs ({m['mean_kb']:.0f} KB on average, {m['min_side']}-{m['max_side']} px), "
             f"{m['arch']} at {m['size']} px, {m['cpus']} CPU cores, torch {m['torch']}, torchvision {m['torchvision']}, "
             f"fastai {m['fastai']}. Stock: bs {m['stock']['bs']} {m['stock']['precision']}; "
             f"fast: bs {m['fast']['bs']} {m['fast']['precision']}"
             f"{' channels_last, `fast_training` (PyTorch AdamW, loss kept on the GPU)' if m['device'] == 'cuda' else ''}"
             f"{', decoded images kept between epochs (up to %g GiB)' % m['fast']['dl_kwargs']['cache_gb'] if m['fast'].get('dl_kwargs', {}).get('cache_gb') else ''}"
             f"{', BatchNorm statistics refreshed after each fit (`RefreshBatchNormStats`, left out of the training speed)' if m['fast'].get('refresh_bn') else ''}.", '',
             '| measure | workers | stock | fast | fast / stock | goal |', '|---|---|---|---|---|---|']
    def wl(w):
        if w != 'all': return str(w)
        return f"all ({m['stock']['workers_used']['all']} stock, {m['fast']['workers_used']['all']} fast)"
    for w in m['worker_counts']:
        s, f = r[f'stock_w{w}'], r[f'fast_w{w}']
        lines.append(f"| data only, images/s | {wl(w)} | {s['data_img_s']:.0f} | {f['data_img_s']:.0f} | {ratio(f['data_img_s'], s['data_img_s']):.2f}x | |")
        if 'data_img_s_cached' in f:
            lines.append(f"| data only, second pass (from the cache), images/s | {wl(w)} | | {f['data_img_s_cached']:.0f} | | |")
    for w in m['worker_counts']:
        s, f = r[f'stock_w{w}'], r[f'fast_w{w}']
        goal = '>= 5x' if w == 2 else '>= 2.5x'
        sp = ratio(s['seconds'], f['seconds'])
        lines.append(f"| fine_tune(1), seconds | {wl(w)} | {s['seconds']:.1f} | {f['seconds']:.1f} | {sp:.2f}x faster | {goal} |")
    for w in m['worker_counts']:
        s, f = r[f'stock_w{w}'], r[f'fast_w{w}']
        checks = ', '.join(f"{label} {f[k]:.4f}" for k, label in (('error_rate_fp32_eval', 'fp32 eval'), ('error_rate_batch_stats', 'BN batch stats')) if k in f)
        lines.append(f"| final error_rate | {wl(w)} | {s['error_rate']:.4f} | {f['error_rate']:.4f} ({checks}) | | equal within noise |")
    for w in m['worker_counts']:
        f = r[f'fast_w{w}']
        if 'cache_hits' in f:
            lines.append(f"\nDecoded-image cache in the fast fine_tune ({wl(w)} workers): {f['cache_hits']:,} images taken from it, "
                         f"{f['cache_misses']:,} decoded, {f['cache_gib']:.1f} GiB kept.")
    c = r['ceiling']
    lines += ['', '| training speed, unfrozen epoch (images/s) | workers | whole epoch | from 2nd batch | raw PyTorch ceiling | share (from 2nd batch) | goal |',
              '|---|---|---|---|---|---|---|']
    for w in m['worker_counts']:
        for kind, goal in (('stock', ''), ('fast', '>= 80%')):
            v = r[f'{kind}_w{w}']
            lines.append(f"| {kind} (bs {m[kind]['bs']} {m[kind]['precision']}) | {wl(w)} | {v['train_img_s_unfrozen']:.0f} | "
                         f"{v['train_img_s_unfrozen_steady']:.0f} | {c[kind]:.0f} | {ratio(v['train_img_s_unfrozen_steady'], c[kind]):.0%} | {goal} |")
    extra = [k for k in r if k.startswith(('fast_stock_training', 'stock_at_fast', 'fast_no_cache', 'fast_bs'))]
    if extra:
        lines += ['', '| variant | data images/s | fine_tune(1) s | unfrozen img/s (steady) | share of its ceiling | error_rate | fp32 eval | BN batch stats |',
                  '|---|---|---|---|---|---|---|---|']
        for k in extra:
            v, ceil = r[k], c.get(k.rsplit('_w', 1)[0], c['fast'])  # another batch size has a ceiling of its own
            lines.append(f"| {k} | {v['data_img_s']:.0f} | {v['seconds']:.1f} | {v['train_img_s_unfrozen']:.0f} ({v['train_img_s_unfrozen_steady']:.0f}) | "
                         f"{ratio(v['train_img_s_unfrozen_steady'], ceil):.0%} of {ceil:.0f} | {v['error_rate']:.4f} | {v.get('error_rate_fp32_eval', float('nan')):.4f} | {v['error_rate_batch_stats']:.4f} |")
    if 'fastai_loop' in r:
        fl, dc = r['fastai_loop'], r['decode_capacity']
        lines += ['', '| where the time goes (images/s) | stock settings | fast settings |', '|---|---|---|',
                  f"| raw PyTorch steps, batches on the device | {c['stock']:.0f} | {c['fast']:.0f} |",
                  f"| fastai `Learner.fit`, batches on the device, fastai as it comes | {fl['stock']:.0f} ({ratio(fl['stock'], c['stock']):.0%}) "
                  f"| {fl['fast_stock_training']:.0f} ({ratio(fl['fast_stock_training'], c['fast']):.0%}) |",
                  f"| same, with `fast_training` (PyTorch AdamW, loss kept on the GPU) | | {fl['fast']:.0f} ({ratio(fl['fast'], c['fast']):.0%}) |"]
        for k in (k for k in fl if k.startswith('fast_bs')):
            bs = k.removeprefix('fast_bs')
            lines.append(f"| same, at bs {bs} | | {fl[k]:.0f} ({ratio(fl[k], c[k]):.0%} of {c[k]:.0f}, the raw loop at bs {bs}) |")
        if 'fast_fused' in fl:
            lines += [f"| raw PyTorch steps with fused AdamW (`fused=True`) | | {c['fast_fused']:.0f} ({ratio(c['fast_fused'], c['fast']):.0%}) |",
                      f"| fastai with `fast_training` and fused AdamW | | {fl['fast_fused']:.0f} ({ratio(fl['fast_fused'], c['fast']):.0%}) |"]
        lines += [f"| one decode thread alone: batch decode (nvJPEG on a GPU) | | {dc['decode']:.0f} |",
                  f"| one decode thread alone: batch decode + crop/resize | | {dc['decode_crop_resize']:.0f} |",
                  f"| one decode thread alone: training crops from the cache (every epoch after the first) | | {dc['training_crops_from_cache']:.0f} |"]
    if r.get('ceiling_with_decoding'):
        cd = r['ceiling_with_decoding']
        lines += [f"| raw PyTorch steps while a thread decodes batches on the same GPU | | {cd['fast']:.0f} "
                  f"({ratio(cd['fast'], c['fast']):.0%}; the thread decoded {cd['decode_img_s']:.0f} images/s) |",
                  f"| raw PyTorch steps while a thread makes training crops from the cache on the same GPU | | {cd['fast_cached']:.0f} "
                  f"({ratio(cd['fast_cached'], c['fast']):.0%}; the thread made {cd['render_img_s']:.0f} images/s) |"]
    if r.get('data_only_readers'):
        lines += ['', '| fast loader alone, file-reading workers | first pass (decoding) images/s | second pass (from the cache) images/s |', '|---|---|---|']
        readers = {2: r.get('fast_w2'), **r['data_only_readers']}
        lines += [f"| {n} | {v['data_img_s']:.0f} | {v.get('data_img_s_cached', float('nan')):.0f} |" for n, v in readers.items() if v]
    if r.get('fastai_loop_syncs') is not None:
        lines += ['', "Where fastai's loop makes Python wait for the GPU (fast settings, per training step):", '']
        lines += [f"- {n:.2f} x {where}" for where, n in r['fastai_loop_syncs'].items()] or ['- nowhere']
    if 'host_ms_per_step' in r:
        h, b = r['host_ms_per_step'], m['fast']['bs']
        lines += ['', f"Time Python takes to queue one training step (bs 2 at 64 px, too little work to keep the GPU busy): "
                      f"raw PyTorch {h['raw']:.1f} ms, fastai with `fast_training` {h['fastai_fast']:.1f} ms. A raw step at the fast "
                      f"settings (bs {b}) takes {b / c['fast'] * 1e3:.1f} ms: where the two are close, the loop is bound by Python, not by the GPU."]
    if res.get('errors'):
        lines += ['', 'Variants that failed on this machine (nan or missing above):', ''] + [f"- {k}: {v}" for k, v in res['errors'].items()]
    lines += ['', f"Total run time {m['total_s']:.0f} s (image generation {m['generate_s']:.0f} s)."]
    return '\n'.join(lines) + '\n'

# ------------------------------------------------------------------------------------- configurations
def configurations(args, gpu: bool) -> dict:
    "Every configuration the run measures, by the name its results carry: the loader side (`fast`, `bs`, `dl_kwargs`) and the learner side (`training`, `precision`, `fused`, `refresh_bn`: see `apply_settings`)."
    from course_utils.training import gpu_amp_mode
    stock = dict(fast=False, bs=args.stock_bs, precision='fp32', training='stock')
    fast = dict(fast=True, bs=args.fast_bs or (256 if gpu else args.stock_bs), precision=args.fast_precision or (gpu_amp_mode() if gpu else 'fp32'),
                training='fast', dl_kwargs={'cache_gb': args.cache_gb if args.cache_gb is not None else (16 if gpu else 0)},
                refresh_bn=True)  # a short run from random weights, what RefreshBatchNormStats is for (harmless at any batch size)
    return {'stock': stock, 'fast': fast,
            'fast_stock_training': {**fast, 'training': 'stock'},  # the fast loader with fastai's own training loop
            'stock_at_fast_settings': {**fast, 'fast': False, 'dl_kwargs': {}},  # the batch size and precision without the fast loader
            'fast_no_cache': {**fast, 'dl_kwargs': {}},
            f"fast_bs{fast['bs'] // 2}": {**fast, 'bs': fast['bs'] // 2},  # more, smaller steps (where Python's time per step counts for more)
            'fast_fused': {**fast, 'fused': True},  # the optimizer in one kernel
            'fast_tiny': {**fast, 'bs': 2, 'size': 64}}  # too little work to keep a GPU busy: how long Python takes to queue a step

def pretend_gpu_dls():
    "Loaders of four labelled pictures that only say they are on a GPU: nothing moves to the device before a fit, so learners for one can be built anywhere."
    import torch
    from fastai.vision.all import Categorize, Datasets
    dls = Datasets(range(4), [[lambda i: torch.zeros(3, 8, 8)], [is_odd, Categorize()]], splits=[[0, 1], [2, 3]]).dataloaders(bs=2, device='cpu')
    dls.device = torch.device('cuda')
    return dls

def is_odd(i): return i % 2 == 1

def learner_settings(learn) -> dict:
    "What a learner trains with: its mixed precisions, its optimizer (the `opt_func`'s name, and 'fused' where the optimizer it makes is), and whether it refreshes BatchNorm statistics."
    from fastai.callback.fp16 import MixedPrecision
    from course_utils.training import RefreshBatchNormStats
    made = learn.opt_func(learn.model.parameters(), lr=1e-3)
    fused = getattr(made, 'opt', None) is not None and made.opt.defaults.get('fused')  # PyTorch's optimizers come wrapped in fastai's OptimWrapper
    return dict(precisions=[cb.amp_mode.value for cb in learn.cbs if isinstance(cb, MixedPrecision)],
                optimizer=getattr(learn.opt_func, 'func', learn.opt_func).__name__ + (' fused' if fused else ''),  # a partial names its function
                refresh_bn=any(isinstance(cb, RefreshBatchNormStats) for cb in learn.cbs))

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--n-images', type=int, default=None, help=f'images to generate (default {PETS_IMAGES}; --quick: 240)')
    p.add_argument('--device', default=None, help="'cuda', 'cpu' (default: cuda when available)")
    p.add_argument('--quick', action='store_true', help='small CPU-sized run: 240 images, resnet18 at 96 px')
    p.add_argument('--out', default=str(RESULTS_DIR), help='folder for the JSON and markdown tables')
    p.add_argument('--arch', default=None, help='torchvision architecture (default resnet34; --quick: resnet18)')
    p.add_argument('--size', type=int, default=None, help='image size (default 224; --quick: 96)')
    p.add_argument('--stock-bs', type=int, default=64)
    p.add_argument('--fast-bs', type=int, default=None, help='fast path batch size (default 256 on a GPU, else --stock-bs)')
    p.add_argument('--fast-precision', default=None, choices=['fp32', 'bf16', 'fp16'], help="default on a GPU: bf16 where it is native, else fp16; on a CPU fp32")
    p.add_argument('--cache-gb', type=float, default=None, help='decoded images the fast path keeps between epochs (default 16 GiB on a GPU, '
                   'else 0: on a CPU the workers decode)')
    p.add_argument('--data-images', type=int, default=2048, help='images per data-only pass')
    p.add_argument('--cache', default=tempfile.gettempdir(), help='where generated JPEGs are kept between runs')
    p.add_argument('--seed', type=int, default=42)
    p.add_argument('--variants', action='store_true', help="also: where the time goes, the fast loader with fastai's own training loop, "
                   'and the stock loader with the fast settings')
    p.add_argument('--check-settings', action='store_true', help='measure nothing: for every configuration of a GPU run with --variants, build '
                   "the learner fine_tune builds, on loaders that only say they are on a GPU, and print its settings as JSON")
    args = p.parse_args(argv)

    t_start = time.perf_counter()
    import torch, torchvision, fastai
    from fastai.vision.all import get_image_files
    import fastai.vision.all as fv
    args.device = torch.device('cuda' if args.check_settings else args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    gpu = args.device.type == 'cuda'
    n = args.n_images or (240 if args.quick else PETS_IMAGES)
    args.arch = args.arch or ('resnet18' if args.quick else 'resnet34')
    args.arch_fn = getattr(fv, args.arch)
    args.size = args.size or (96 if args.quick else 224)
    cpus = os.cpu_count() or 1
    worker_counts = [2] + (['all'] if cpus > 2 else [])  # on 2 cores, "all" is the same run again
    configs = configurations(args, gpu)
    if args.check_settings:
        print(json.dumps({name: learner_settings(make_learner(pretend_gpu_dls(), cfg, args)) for name, cfg in configs.items()}, indent=2))
        return
    stock, fast = configs['stock'], configs['fast']
    half_key = f"fast_bs{fast['bs'] // 2}"
    half = configs[half_key]
    if gpu: torch.backends.cudnn.benchmark = True  # for every configuration alike

    t0 = time.perf_counter()
    folder = make_images(n, args.seed, Path(args.cache), cpus)
    generate_s = time.perf_counter() - t0
    files = get_image_files(folder)
    sizes = [Image.open(f).size for f in files[:200]]
    print(f"{len(files)} images in {folder} ({generate_s:.0f} s)", flush=True)

    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    results, errors = {}, {}
    def save(): (out / 'bench_fastimage.partial.json').write_text(json.dumps(dict(results, errors=errors), indent=2))  # kept if a run is cut short
    def variant(name, measure, failed=float('nan')):
        "`measure()`, or `failed` with the error kept: a variant that fails on some machine must not end the run."
        try: return measure()
        except Exception as e:
            errors[name] = f"{type(e).__name__}: {e}"
            print(f"{name} failed: {errors[name]}", flush=True)
            return failed
    steps, warmup = (50, 5) if gpu else (3, 1)
    results['ceiling'] = {k: ceiling(c, args, steps, warmup) for k, c in (('stock', stock), ('fast', fast))}
    if args.variants and gpu: results['ceiling'][half_key] = variant('ceiling at half the batch', lambda: ceiling(half, args, steps, warmup))
    print('ceiling', results['ceiling'], flush=True); save()
    if args.variants:  # where the time goes: fastai's loop alone, and one decode thread alone
        results['fastai_loop'] = {'stock': fastai_loop(stock, args, steps, warmup), 'fast': fastai_loop(fast, args, steps, warmup),
                                  'fast_stock_training': fastai_loop(configs['fast_stock_training'], args, steps, warmup)}
        if gpu:  # half the batch; the optimizer in one kernel; and, on a batch too small to keep the GPU busy, how long Python takes to queue one step
            results['fastai_loop'][half_key] = variant('fastai loop at half the batch', lambda: fastai_loop(half, args, steps, warmup))
            results['fastai_loop']['fast_fused'] = variant('fastai loop, fused AdamW', lambda: fastai_loop(configs['fast_fused'], args, steps, warmup))
            results['ceiling']['fast_fused'] = variant('raw loop, fused AdamW', lambda: ceiling(configs['fast_fused'], args, steps, warmup))
            tiny = configs['fast_tiny']
            results['host_ms_per_step'] = {'raw': 2e3 / variant('raw loop, tiny batch', lambda: ceiling(tiny, args, steps, warmup)),
                                           'fastai_fast': 2e3 / variant('fastai loop, tiny batch', lambda: fastai_loop(tiny, args, steps, warmup))}
        print('fastai_loop', results['fastai_loop'], flush=True)
        results['decode_capacity'] = decode_capacity(files, fast, args)
        print('decode_capacity', results['decode_capacity'], flush=True); save()
        if gpu:  # what decoding on the same GPU costs the model, and where fastai's loop waits for the GPU
            results['ceiling_with_decoding'] = variant('raw loop with decoding alongside', lambda: ceilings_with_decoding(files, fast, args, steps, warmup), None)
            results['fastai_loop_syncs'] = variant('sync audit', lambda: fastai_loop_syncs(fast, args, steps, warmup), None)
            print('ceiling_with_decoding', results['ceiling_with_decoding'], 'syncs', results['fastai_loop_syncs'], flush=True); save()
    if args.variants and fast['dl_kwargs']['cache_gb']:  # can the file readers keep up once every image comes from the cache?
        results['data_only_readers'] = {n: variant(f'data only, {n} readers', lambda: data_only(files[:args.data_images], folder, {**fast, 'num_workers': n}, args, n), None)
                                        for n in (4, 8)}  # 2 readers: the fast run's own data-only pass
        print('data_only_readers', results['data_only_readers'], flush=True); save()
    runs = [(f'{kind}_w{w}', cfg, w) for w in worker_counts for kind, cfg in (('stock', stock), ('fast', fast))]
    variant_runs, w_last = [], worker_counts[-1]
    if args.variants:  # what else could explain a gap: the optimizer, or the batch size and precision themselves
        variant_runs += [(f'fast_stock_training_w{w}', configs['fast_stock_training'], w) for w in worker_counts]
        at_w_last = ['stock_at_fast_settings'] + (['fast_no_cache'] if fast['dl_kwargs']['cache_gb'] else []) + ([half_key] if gpu else [])
        variant_runs += [(f'{name}_w{w_last}', configs[name], w_last) for name in at_w_last]
    def run(cfg, w): return dict(**data_only(files[:args.data_images], folder, cfg, args, w), **fine_tune(files, folder, cfg, args, w))
    for key, cfg, w, required in [(*r, True) for r in runs] + [(*r, False) for r in variant_runs]:
        result = run(cfg, w) if required else variant(key, lambda: run(cfg, w), None)
        if result is not None: results[key] = result
        print(key, result, flush=True); save()
        gc.collect()  # a learner is a web of references: free its GPU memory (and decoded-image cache) before the next run

    meta = dict(n_images=len(files), mean_kb=float(np.mean([f.stat().st_size for f in files])) / 1024,
                min_side=min(min(s) for s in sizes), max_side=max(max(s) for s in sizes), arch=args.arch, size=args.size,
                device=args.device.type, device_name=torch.cuda.get_device_name(args.device) if gpu else f'CPU, {cpus} cores',
                cpus=cpus, worker_counts=worker_counts, stock=stock, fast=fast, torch=torch.__version__,
                torchvision=torchvision.__version__, fastai=fastai.__version__, generate_s=generate_s,
                total_s=time.perf_counter() - t_start)
    res = dict(meta=meta, results=results, errors=errors)
    write_report(out, 'bench_fastimage', res, markdown(res), markdown_file=True)

if __name__ == '__main__':
    main()
