"""The fast-image benchmark, checked without a GPU through its command line: its learner settings, and a small CPU run.

`bench/bench_fastimage.py` only measures on a GPU what these settings do, so a slip in them (the
wrong precision, the optimizer left at fastai's, the BatchNorm refresh missing) would spoil a GPU
run that CI never makes. Its `--check-settings` builds each configuration's learner as the run does,
on loaders that merely say they are on a GPU (nothing moves to the device before training starts).
Each run here is a fresh process, as a user starts it, importing the installed package.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / 'bench' / 'bench_fastimage.py'


def bench(*args: str, timeout: float = 600) -> str:
    "Run the benchmark with `args`; its standard output (its error output too, should it fail)."
    r = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.mark.parametrize('precision', ['bf16', 'fp16'])
def test_each_configuration_gets_one_precision_its_optimizer_and_its_refresh(precision):
    mixed = [precision]
    want = {  # (mixed precisions, optimizer, BatchNorm refresh) that each configuration means on a GPU
        'stock': ([], 'Adam', False),  # lesson 1 as it comes: fastai's Adam in fp32
        'fast': (mixed, 'torch_adamw', True),
        'fast_stock_training': (mixed, 'Adam', True),  # the fast loader with fastai's own training
        'stock_at_fast_settings': (mixed, 'torch_adamw', True),
        'fast_no_cache': (mixed, 'torch_adamw', True),
        'fast_bs128': (mixed, 'torch_adamw', True),
        'fast_fused': (mixed, 'torch_adamw fused', True),
        'fast_tiny': (mixed, 'torch_adamw', True)}
    got = json.loads(bench('--check-settings', '--fast-precision', precision))
    assert {name: (s['precisions'], s['optimizer'], s['refresh_bn']) for name, s in got.items()} == want


def test_quick_cpu_run_writes_its_report(tmp_path):
    "The CPU smoke run (`--quick --variants`) goes through stock and fast and writes the JSON and the table it promises."
    # 160 pictures at 64 px: every part of the run, at a fraction of --quick's default work
    bench('--quick', '--variants', '--n-images', '160', '--size', '64', '--out', str(tmp_path), '--cache', str(tmp_path))
    res = json.loads((tmp_path / 'bench_fastimage.json').read_text())
    assert res['errors'] == {}
    assert {'stock_w2', 'fast_w2', 'fastai_loop', 'decode_capacity'} <= set(res['results'])
    assert all(res['results'][k]['data_img_s'] > 0 for k in ('stock_w2', 'fast_w2'))
    table = (tmp_path / 'bench_fastimage.md').read_text()
    assert '| data only, images/s | 2 |' in table and '| fine_tune(1), seconds | 2 |' in table
    assert 'Variants that failed' not in table
