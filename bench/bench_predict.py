"""Serving a classifier: stock fastai (`load_learner` + `learn.predict`) against the app's predictor.

A resnet34 with 2 classes at 224 px (random weights: speed does not depend on them) is saved both ways:
`learn.export()` (a pickle) and `export_for_app` (safetensors + ONNX + manifest). Then, on this machine:

1. latency per image, median of 50: `learn.predict`, our predictor on ONNX Runtime and on PyTorch, and the
   bare forward pass of the same network on an already prepared tensor, in PyTorch and ONNX Runtime (the floors);
2. process start to first prediction, in fresh processes: `import fastai.vision.all` + `load_learner` +
   `predict`, against `course_utils.predict.load_predictor` + `predict`; and the resident memory (RSS) of each
   process after that first prediction (what one app kernel costs);
3. crowd runs: 8, 16 and 32 visitors arriving within a second at a Voila server of the bear app with its pool of
   pre-heated kernels full (`--tabs` of them in headless Chromium tabs, the others speaking the page's HTTP and
   kernel-websocket protocol; each opens the page, uploads a photo, classifies), with latency percentiles, the count of visitors
   answered, the memory of each kernel and the kernels freed when they leave;
4. the 8-bit graph (`export_for_app(..., int8=True)`): its latency on the resnet34 above, and, since random
   weights make agreement meaningless, a resnet18 trained for real on the offline pets sample
   (`train_demo_model`), whose export checks int8 against float32 on the validation set.

Every model runs with the same number of threads (default 1, what the app kernels use).
Run:  .venv/bin/python bench/bench_predict.py [--threads 1] [--visitors 8,16,32] [--pool 16] [--tabs 1,16] [--no-voila]
Writes its table into bench/RESULTS.md (between this script's markers; the rest of the file is kept).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
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


async def _browser_visitor(ctx, url: str, photo: Path, delay: float, timeout_s: float) -> dict:
    "A visitor in a real tab: open the page, upload `photo`, classify."
    await asyncio.sleep(delay)
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
        return {'ok': True, 'browser': True, 'load_s': loaded, 'classify_s': time.perf_counter() - t1}
    except Exception as e:
        return {'ok': False, 'browser': True, 'error': f'{type(e).__name__}: {e}'[:200]}
    finally:
        await page.close(run_before_unload=True)


V1 = 'v1.kernel.websocket.jupyter.org'  # the kernel websocket protocol JupyterLab's and Voila's pages speak


def _frame(channel: str, parts: list[bytes]) -> bytes:
    "A kernel message in the v1 websocket framing: the part count, the offsets, the channel, then the parts."
    offsets = [8 * (len(parts) + 3)]
    for part in [channel.encode(), *parts]: offsets.append(offsets[-1] + len(part))
    return b''.join(n.to_bytes(8, 'little') for n in [len(offsets), *offsets]) + channel.encode() + b''.join(parts)


def _unframe(frame: bytes) -> dict:
    "The header and content of a message in the v1 framing."
    n = int.from_bytes(frame[:8], 'little')
    offsets = [int.from_bytes(frame[8 * (i + 1):8 * (i + 2)], 'little') for i in range(n)] + [len(frame)]
    header, _, _, content = (json.loads(frame[offsets[i]:offsets[i + 1]]) for i in range(1, 5))
    return {'header': header, 'content': content}


async def _protocol_visitor(base: str, photo: Path, delay: float, timeout_s: float) -> dict:
    """A visitor whose browser runs on its own device: the same requests and widget messages as a tab, without the
    rendering. Page to widgets: the page, its scripts, the kernel's websocket and every widget's state received."""
    from tornado.httpclient import AsyncHTTPClient, HTTPRequest
    from tornado.websocket import websocket_connect
    await asyncio.sleep(delay)
    http, session, t0 = AsyncHTTPClient(), uuid.uuid4().hex, time.perf_counter()
    try:
        page = await http.fetch(base + '/', request_timeout=timeout_s, connect_timeout=timeout_s)
        html, cookies = page.body.decode(), '; '.join(c.split(';')[0] for c in page.headers.get_list('Set-Cookie'))
        kernel = re.search(r'"kernelId": "([0-9a-f-]{36})"', html).group(1)
        for src in sorted(set(re.findall(r'<script[^>]*src="([^"]+)"', html))):
            await http.fetch(urllib.parse.urljoin(base + '/', src), request_timeout=timeout_s)
        ws = await websocket_connect(HTTPRequest(f"{base.replace('http', 'ws', 1)}/api/kernels/{kernel}/channels",
                                                 headers={'Cookie': cookies}), max_message_size=64 * 2**20, subprotocols=[V1])

        def send(msg_type: str, content: dict, buffers=(), metadata=None):
            header = {'msg_id': uuid.uuid4().hex, 'msg_type': msg_type, 'session': session, 'username': 'visitor',
                      'version': '5.3', 'date': '2026-01-01T00:00:00Z'}
            parts = [json.dumps(part).encode() for part in (header, {}, metadata or {}, content)]
            return ws.write_message(_frame('shell', parts + list(buffers)), binary=True)

        async def until(found, msg_type='comm_msg'):
            while True:
                frame = await asyncio.wait_for(ws.read_message(), timeout_s)
                if frame is None: raise ConnectionError('the kernel websocket closed')
                msg = _unframe(frame)
                if msg['header']['msg_type'] == msg_type and (got := found(msg['content'])): return got

        control = uuid.uuid4().hex
        await send('comm_open', {'comm_id': control, 'target_name': 'jupyter.widget.control', 'data': {}}, metadata={'version': '1.0.0'})
        await send('comm_info_request', {'target_name': 'jupyter.widget.control'})  # the comm exists once this is answered
        await until(lambda c: control in c.get('comms', {}), 'comm_info_reply')
        await send('comm_msg', {'comm_id': control, 'data': {'method': 'request_states'}})
        states = await until(lambda c: c['data'].get('method') == 'update_states' and c['data']['states'])
        loaded = time.perf_counter() - t0
        by_class = lambda cls: next(k for k, v in states.items() if cls in v['state'].get('_dom_classes', ()))
        upload = next(k for k, v in states.items() if v['model_name'] == 'AnyModel')
        result, classify = by_class('app-result'), by_class('app-classify')
        shows = lambda text: lambda c: c['comm_id'] == result and text in c['data'].get('state', {}).get('value', '')
        data = photo.read_bytes()
        await send('comm_msg', {'comm_id': upload, 'data': {'method': 'custom', 'content': {
            'event': 'file', 'name': photo.name, 'size': len(data)}}}, [data])
        await until(shows(f'Ready: {photo.name}'))
        t1 = time.perf_counter()
        await send('comm_msg', {'comm_id': classify, 'data': {'method': 'custom', 'content': {'event': 'click'}}})
        await until(shows('class="ok"'))
        classified = time.perf_counter() - t1
        ws.close()
        xsrf = re.search(r'_xsrf=([^;]+)', cookies).group(1)  # what the page's beforeunload handler sends
        await http.fetch(HTTPRequest(f'{base}/voila/api/shutdown/{kernel}', method='POST', body=f'_xsrf={xsrf}',
                                     headers={'Cookie': cookies}, request_timeout=timeout_s))
        return {'ok': True, 'browser': False, 'load_s': loaded, 'classify_s': classified}
    except Exception as e:
        return {'ok': False, 'browser': False, 'error': f'{type(e).__name__}: {e}'[:200]}


async def _crowd(base: str, photo: Path, n: int, tabs: int, timeout_s: float, profile: Path, during) -> list[dict]:
    "`n` visitors arriving spread over one second: `tabs` of them in real tabs, the others by protocol."
    from tornado.httpclient import AsyncHTTPClient
    AsyncHTTPClient.configure(None, max_clients=n + 8)  # a browser per visitor: no queue on our side
    arrivals = [i / n for i in range(n)]
    in_tabs = set(arrivals[(n - tabs) // 2:][:tabs])  # from the middle of the burst
    async with loopback_chromium(profile) as ctx:
        watch = asyncio.ensure_future(during())
        runs = await asyncio.gather(*[_browser_visitor(ctx, base + '/', photo, t, timeout_s) if t in in_tabs
                                      else _protocol_visitor(base, photo, t, timeout_s) for t in arrivals])
        watch.cancel()
        return runs


def _kernels(server_pid: int) -> list:
    import psutil
    return psutil.Process(server_pid).children(recursive=True)


def _wait_for_pool(log: Path, pool: int, timeout_s: float = 300):
    "Wait until Voila has filled its pool of pre-heated kernels, as a server that has been up a while has."
    deadline = time.monotonic() + timeout_s
    while f'is filled with {pool} kernel(s)' not in log.read_text(errors='replace'):
        if time.monotonic() > deadline: raise TimeoutError(f'the kernel pool did not fill in {timeout_s} s; see {log}')
        time.sleep(0.5)


def _kernels_freed(log: Path, n: int, timeout_s: float = 30) -> int:
    "How many kernels Voila shut down as their visitors left (waiting up to `timeout_s` for all `n`)."
    deadline = time.monotonic() + timeout_s
    while (freed := log.read_text(errors='replace').count('Kernel shutdown:')) < n and time.monotonic() < deadline:
        time.sleep(0.5)
    return freed


def voila_load(work: Path, photo: Path, n: int, pool: int, tabs: int = 1, timeout_s: float = 240) -> dict:
    "N visitors of the bear app arriving within a second, each with a kernel of their own."
    import psutil
    from course_utils.cli import app_server
    log = work / f'voila-{n}.log'
    env = dict(os.environ, COURSE_MODELS=str(work / 'models'), COURSE_APP_POOL=str(pool), PYTHONWARNINGS='ignore',
               JUPYTER_RUNTIME_DIR=str(work / 'runtime'), IPYTHONDIR=str(work / 'ipython'))
    peak = {'kernels': 0, 'rss_mb': 0.0}

    async def watch_memory():
        while True:
            rss = [k.memory_info().rss / 2**20 for k in _kernels(server.pid) if k.is_running()]
            if sum(rss) > peak['rss_mb']: peak.update(kernels=len(rss), rss_mb=sum(rss))
            await asyncio.sleep(0.5)

    with app_server(ROOT, 'bears', env=env, log=log) as base:
        server = next(p for p in psutil.Process().children() if 'voila' in ' '.join(p.cmdline()))
        _wait_for_pool(log, pool)
        t0 = time.perf_counter()
        runs = asyncio.run(_crowd(base, photo, n, min(tabs, n), timeout_s, work / f'chromium-{n}-{tabs}', watch_memory))
        wall = time.perf_counter() - t0
        freed = _kernels_freed(log, n)
    ok = [r for r in runs if r['ok']]
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else float('nan')
    in_tabs = [r for r in ok if r['browser']]
    return {'visitors': n, 'pool': pool, 'tabs': min(tabs, n), 'succeeded': len(ok), 'wall_s': wall, 'errors': [r['error'] for r in runs if not r['ok']],
            'peak_kernels': peak['kernels'], 'mb_per_kernel': peak['rss_mb'] / max(peak['kernels'], 1),
            'freed': freed,
            'tab_load_s_p90': pct([r['load_s'] for r in in_tabs], 90),
            **{f'{k}_p{q}': pct([r[k] for r in ok], q) for k in ('load_s', 'classify_s') for q in (50, 90, 100)}}


def table(lat: dict, start: dict, loads: list[dict], threads: int, trained: dict | None = None) -> str:
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
    if loads:
        rows += ['', f"Voila crowd runs: N visitors arriving within one second at a server with {loads[0]['pool']} pre-heated "
                 "kernels waiting. Some visitors are real tabs (headless Chromium on this same machine, from the middle of "
                 "the burst); the others make the same requests and widget messages as a tab over HTTP and the kernel "
                 "websocket, as visitors whose browsers run on their own devices do. Page to widgets: from the page request "
                 "to every widget's state received (a tab: to the upload button on screen). Each visitor uploads a photo, "
                 "classifies it and leaves, which must free its kernel.", '',
                 '| visitors | real tabs | answered | page to widgets p50 / p90 / max (s) | tabs alone p90 (s) '
                 '| click to answer p50 / p90 / max (s) | MB per kernel | kernels freed |', '|---:|---:|---:|---|---:|---|---:|---:|']
        for l in loads:
            rows.append(f"| {l['visitors']} | {l['tabs']} | {l['succeeded']}/{l['visitors']} | {l['load_s_p50']:.2f} / "
                        f"{l['load_s_p90']:.2f} / {l['load_s_p100']:.2f} | {l['tab_load_s_p90']:.2f} | {l['classify_s_p50']:.2f} / "
                        f"{l['classify_s_p90']:.2f} / {l['classify_s_p100']:.2f} | {l['mb_per_kernel']:.0f} | {l['freed']}/{l['visitors']} |")
        errors = [e for l in loads for e in l['errors']]
        if errors: rows.append(f"\nErrors: {errors}")
    if trained: rows += int8_rows(trained)
    return '\n'.join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--visitors', default='8,16,32', help='crowd sizes, comma-separated')
    ap.add_argument('--pool', type=int, default=16, help='pre-heated kernels waiting on the server')
    ap.add_argument('--tabs', default='1', help='how many visitors of each crowd are real tabs (the others speak the protocol); '
                    'comma-separated to run each crowd once per value')
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
        loads = [] if a.no_voila else [voila_load(work, photo, int(n), a.pool, int(t))
                                       for t in a.tabs.split(',') for n in a.visitors.split(',')]
    text = table(lat, start, loads, a.threads, trained)
    print(text)
    section = f'{START}\n## Serving a classifier (`bench/bench_predict.py`, {time.strftime("%Y-%m-%d")})\n\n{text}\n{END}'
    old = RESULTS.read_text() if RESULTS.exists() else '# Benchmarks\n'
    new = re.sub(re.escape(START) + '.*?' + re.escape(END), lambda _: section, old, flags=re.S) if START in old else old.rstrip() + '\n\n' + section + '\n'
    RESULTS.write_text(new)


if __name__ == '__main__':
    main()
