"""Serving a classifier: stock fastai (`load_learner` + `learn.predict`) against the app's predictor.

A resnet34 with 2 classes at 224 px (random weights: speed does not depend on them) is saved both ways:
`learn.export()` (a pickle) and `export_for_app` (safetensors + ONNX + manifest). Then, on this machine:

1. latency per image, median of 50: `learn.predict`, our predictor on ONNX Runtime and on PyTorch, and the
   bare forward pass of the same network on an already prepared tensor, in PyTorch and ONNX Runtime (the floors);
2. process start to first prediction, in fresh processes: `import fastai.vision.all` + `load_learner` +
   `predict`, against `course_utils.predict.load_predictor` + `predict`; and the resident memory (RSS) of each
   process after that first prediction (what one app kernel costs);
3. a load run: N visitors at once on a Voila server of the bear app (headless chromium, one tab each:
   open the page, upload a photo, classify), with latency percentiles and the count of successes;
4. the 8-bit graph (`export_for_app(..., int8=True)`): its latency on the resnet34 above, and, since random
   weights make agreement meaningless, a resnet18 trained for real on the offline pets sample
   (`train_demo_model`), whose export checks int8 against float32 on the validation set.

Every model runs with the same number of threads (default 1, what the app kernels use).
Run:  .venv/bin/python bench/bench_predict.py [--threads 1] [--visitors 8] [--no-voila]
Writes its table into bench/RESULTS.md (between this script's markers; the rest of the file is kept).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchlib import BENCH, ROOT, call_times, loopback_chromium, ratio

RESULTS = BENCH / 'RESULTS.md'
START, END = '<!-- bench_predict:start -->', '<!-- bench_predict:end -->'
SIZE = 224


def make_models(work: Path, threads: int):
    "Train nothing: build the learner on a tiny two-class folder and save it both ways."
    import torch
    from fastai.vision.all import ImageDataLoaders, Resize, resnet34, vision_learner
    from course_utils.export import export_for_app
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    for label in ('grizzly', 'teddy'):
        (work / 'data' / label).mkdir(parents=True, exist_ok=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (300, 400, 3), np.uint8)).save(work / 'data' / label / f'{i}.jpg')
    dls = ImageDataLoaders.from_folder(work / 'data', valid_pct=0.34, seed=0, item_tfms=Resize(SIZE), bs=4, num_workers=0)
    learn = vision_learner(dls, resnet34, pretrained=False)
    # Fresh batch-norm statistics make a random network's outputs saturate (probabilities of exactly 0 and 1),
    # which would hide any difference between the two pipelines: two training-mode passes give it real ones.
    learn.model.train()
    with torch.no_grad():
        for xb, _ in dls.train: learn.model(xb)
    learn.model.eval()
    learn.export(work / 'export.pkl')
    export_for_app(learn, work / 'models' / 'bears', int8=True)  # its check is meaningless: random weights
    photo = work / 'photo.jpg'
    Image.fromarray(rng.integers(0, 255, (375, 500, 3), np.uint8)).resize((500, 375)).save(photo, quality=90)
    return photo


def median_ms(f, n: int = 50, warmup: int = 3) -> float:
    return 1000 * statistics.median(call_times(f, n, warmup))


def latency(work: Path, photo: Path, threads: int) -> dict:
    import torch
    from fastai.vision.all import PILImage, load_learner
    from course_utils.predict import load_predictor
    torch.set_num_threads(threads)
    learn = load_learner(work / 'export.pkl')
    onnx = load_predictor(work / 'models' / 'bears', 'onnx', threads=threads, precision='fp32')
    eager = load_predictor(work / 'models' / 'bears', 'torch', threads=threads)
    int8 = int8_predictor(work / 'models' / 'bears', threads)
    model = learn.model.eval()
    x = torch.from_numpy(onnx.preprocess(Image.open(photo).convert('RGB')))
    def forward():
        with torch.inference_mode(): model(x)
    predict = lambda: learn.predict(PILImage.create(photo))
    with learn.no_bar(): want = predict()[2].numpy()  # no progress bar: printing it would only slow fastai down
    diffs = {name: float(np.abs(np.array(list(p.predict(photo).probs.values())) - want).max()) for name, p in
             (('onnx', onnx), ('torch', eager))}
    with learn.no_bar(): stock = median_ms(predict)
    xn = x.numpy()
    return {'learn.predict': stock,
            'ours (onnx)': median_ms(lambda: onnx.predict(photo)),
            'ours (torch)': median_ms(lambda: eager.predict(photo)),
            'ours (onnx int8)': median_ms(lambda: int8.predict(photo)),
            'bare forward (torch)': median_ms(forward), 'bare forward (onnx)': median_ms(lambda: onnx._run(xn)),
            'max_prob_diff': diffs,
            'probs': [round(float(p), 4) for p in want]}


def int8_predictor(model_dir: Path, threads: int):
    "The app's predictor on the 8-bit graph, whatever its check said."
    from course_utils.predict import Predictor, _onnx_runner, read_manifest
    manifest = read_manifest(model_dir)
    run, device = _onnx_runner(model_dir, manifest, threads, 'int8')
    return Predictor(manifest, 'onnx', run, 'int8', device)


def trained_int8(work: Path, threads: int) -> dict:
    "Train the pets demo model on the offline sample (it exports with int8), then time its two graphs."
    from course_utils.predict import load_predictor, read_manifest
    dest, home = work / 'models' / 'pets', work / 'fastai_home'
    code = f"from course_utils.export import train_demo_model; train_demo_model('pets', {str(dest)!r})"
    subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT,  # a process of its own: sample mode stays there
                   env=dict(os.environ, COURSE_SAMPLE='1', COURSE_OFFLINE='1', FASTAI_HOME=str(home), PYTHONWARNINGS='ignore'))
    m = read_manifest(dest)
    photo = sorted(home.rglob('*.jpg'))[0]
    fp32, int8 = load_predictor(dest, 'onnx', threads=threads, precision='fp32'), int8_predictor(dest, threads)
    return {**m['int8'], 'training': m['training'], 'arch': m['model']['arch'], 'size': m['input']['size'],
            'fp32_ms': median_ms(lambda: fp32.predict(photo)), 'int8_ms': median_ms(lambda: int8.predict(photo))}


def int8_rows(q: dict) -> list[str]:
    "The trained model's int8 check, from its manifest, and the latency of its two graphs."
    t = q['training']
    return ['', f"The 8-bit graph of a model trained for real: `train_demo_model('pets')` on the offline sample, a {q['arch']} "
            f"at {q['size'][0]} px from random weights (cat or dog; {t['valid']['items']} validation pictures, of which "
            f"the commoner label is {t['valid']['chance']:.1%}). Its export's check, on the validation set:", '',
            '| int8 against float32 | |', '|---|---:|',
            f"| top-1 agreement | {q['agreement']:.1%} |",
            f"| accuracy float32 / int8 | {q['accuracy_fp32']:.1%} / {q['accuracy_int8']:.1%} |",
            f"| accuracy drop | {100 * (q['accuracy_fp32'] - q['accuracy_int8']):.1f} points |",
            f"| check passed (agreement >= 99%, drop <= 1 point) | {'yes' if q['passed'] else 'no'} |",
            f"| per image, float32 / int8 (ms, median of 50) | {q['fp32_ms']:.1f} / {q['int8_ms']:.1f} "
            f"({ratio(q['fp32_ms'], q['int8_ms']):.2f}x) |"]


CHILD_TAIL = """
status = open('/proc/self/status').read()
mb = lambda key: int(status.split(key + ':')[1].split()[0]) / 1024  # kB -> MB
print(json.dumps(dict(done=time.time(), rss_mb=mb('VmRSS'), peak_mb=mb('VmHWM'))))
"""
FASTAI_CHILD = """import json, time
import torch; torch.set_num_threads({threads})
from fastai.vision.all import load_learner, PILImage
learn = load_learner({pkl!r})
learn.predict(PILImage.create({photo!r}))
""" + CHILD_TAIL
OURS_CHILD = """import json, time
from course_utils.predict import load_predictor
load_predictor({model!r}, threads={threads}).predict({photo!r})
""" + CHILD_TAIL


def first_prediction(code: str, runs: int = 3) -> dict:
    "Median wall time from starting a fresh python to its first prediction, and its memory then."
    out = []
    for _ in range(runs):
        t0 = time.time()
        r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, cwd=ROOT,
                           env=dict(os.environ, PYTHONWARNINGS='ignore'))
        d = json.loads(r.stdout.strip().splitlines()[-1])
        out.append((d['done'] - t0, d['rss_mb'], d['peak_mb']))
    return {'seconds': statistics.median(o[0] for o in out), 'rss_mb': statistics.median(o[1] for o in out),
            'peak_mb': statistics.median(o[2] for o in out)}


async def _visitor(ctx, url: str, photo: Path, timeout_s: float) -> dict:
    page = await ctx.new_page()
    t0 = time.perf_counter()
    try:
        await page.goto(url, timeout=timeout_s * 1000)
        await page.locator('.app-upload').wait_for(state='visible', timeout=timeout_s * 1000)
        loaded = time.perf_counter() - t0
        async with page.expect_file_chooser() as fc:
            await page.locator('.app-upload').click()
        await (await fc.value).set_files(str(photo))
        await page.locator('.app-result').get_by_text(f'Ready: {photo.name}').wait_for(timeout=timeout_s * 1000)
        t1 = time.perf_counter()
        await page.locator('.app-classify').click()
        await page.locator('.app-result .ok').wait_for(state='visible', timeout=timeout_s * 1000)
        return {'ok': True, 'load_s': loaded, 'classify_s': time.perf_counter() - t1, 'total_s': time.perf_counter() - t0}
    except Exception as e:
        return {'ok': False, 'error': f'{type(e).__name__}: {e}'[:200]}
    finally:
        await page.close(run_before_unload=True)


async def _visitors(url: str, photo: Path, n: int, timeout_s: float, profile: Path) -> list[dict]:
    async with loopback_chromium(profile) as ctx:
        return await asyncio.gather(*[_visitor(ctx, url, photo, timeout_s) for _ in range(n)])


def voila_load(work: Path, photo: Path, n: int, timeout_s: float = 240) -> dict:
    "N simultaneous visitors of the bear app, each in its own tab (and so its own kernel)."
    from course_utils.cli import app_server
    env = dict(os.environ, COURSE_MODELS=str(work / 'models'), PYTHONWARNINGS='ignore',
               JUPYTER_RUNTIME_DIR=str(work / 'runtime'), IPYTHONDIR=str(work / 'ipython'))
    with app_server(ROOT, 'bears', env=env, log=work / 'voila.log') as base:
        t0 = time.perf_counter()
        runs = asyncio.run(_visitors(base + '/', photo, n, timeout_s, work / 'chromium'))
        wall = time.perf_counter() - t0
    ok = [r for r in runs if r['ok']]
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else float('nan')
    return {'visitors': n, 'succeeded': len(ok), 'wall_s': wall, 'errors': [r['error'] for r in runs if not r['ok']],
            **{f'{k}_p{q}': pct([r[k] for r in ok], q) for k in ('load_s', 'classify_s', 'total_s') for q in (50, 90, 100)}}


def table(lat: dict, start: dict, load: dict | None, threads: int, trained: dict | None = None) -> str:
    base = lat['learn.predict']
    rows = [f'Machine: {os.cpu_count()} CPU cores, shared with other people\'s jobs while measuring (load average '
            f'{os.getloadavg()[0]:.1f}), so absolute numbers are noisy; ratios come from one run. Threads per model: {threads}.',
            '', '| per image (median of 50) | ms | learn.predict / this |', '|---|---:|---:|']
    for k in ('learn.predict', 'ours (onnx)', 'ours (onnx int8)', 'ours (torch)', 'bare forward (torch)', 'bare forward (onnx)'):
        rows.append(f'| {k} | {lat[k]:.1f} | {ratio(base, lat[k]):.2f}x |')
    rows += ['', f"Largest probability difference from learn.predict on the test photo (probabilities {lat['probs']}): "
             f"onnx {lat['max_prob_diff']['onnx']:.1e}, torch {lat['max_prob_diff']['torch']:.1e}.", '',
             '| fresh process: start to first prediction | seconds | RSS after (MB) | peak RSS (MB) |', '|---|---:|---:|---:|']
    for k, v in start.items():
        rows.append(f"| {k} | {v['seconds']:.2f} | {v['rss_mb']:.0f} | {v['peak_mb']:.0f} |")
    f, o = start['fastai: import + load_learner + predict'], start['ours: load_predictor + predict (onnx)']
    rows.append(f"| ratio fastai / ours | {ratio(f['seconds'], o['seconds']):.1f}x | {ratio(f['rss_mb'], o['rss_mb']):.1f}x | |")
    if load:
        rows += ['', f"Voila load run: {load['visitors']} visitors at once (headless chromium, one tab and one kernel each: "
                 f"open, upload a photo, classify): {load['succeeded']}/{load['visitors']} succeeded in {load['wall_s']:.1f} s.",
                 '', '| seconds | p50 | p90 | max |', '|---|---:|---:|---:|']
        for k, name in (('load_s', 'page open to widgets'), ('classify_s', 'click to answer'), ('total_s', 'whole visit')):
            rows.append(f"| {name} | {load[k + '_p50']:.2f} | {load[k + '_p90']:.2f} | {load[k + '_p100']:.2f} |")
        if load['errors']: rows.append(f"\nErrors: {load['errors']}")
    if trained: rows += int8_rows(trained)
    return '\n'.join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--visitors', type=int, default=8)
    ap.add_argument('--no-voila', action='store_true', help='skip the browser load run')
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        photo = make_models(work, a.threads)
        lat = latency(work, photo, a.threads)
        trained = trained_int8(work, a.threads)
        start = {'fastai: import + load_learner + predict': first_prediction(
                     FASTAI_CHILD.format(threads=a.threads, pkl=str(work / 'export.pkl'), photo=str(photo))),
                 'ours: load_predictor + predict (onnx)': first_prediction(
                     OURS_CHILD.format(threads=a.threads, model=str(work / 'models' / 'bears'), photo=str(photo)))}
        load = None if a.no_voila else voila_load(work, photo, a.visitors)
    text = table(lat, start, load, a.threads, trained)
    print(text)
    section = f'{START}\n## Serving a classifier (`bench/bench_predict.py`, {time.strftime("%Y-%m-%d")})\n\n{text}\n{END}'
    old = RESULTS.read_text() if RESULTS.exists() else '# Benchmarks\n'
    new = re.sub(re.escape(START) + '.*?' + re.escape(END), lambda _: section, old, flags=re.S) if START in old else old.rstrip() + '\n\n' + section + '\n'
    RESULTS.write_text(new)


if __name__ == '__main__':
    main()
