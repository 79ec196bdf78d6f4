"""The fast-image benchmark, checked without a GPU: its learner settings, and a small CPU run.

`bench/bench_fastimage.py` only measures on a GPU what these settings do, so a slip in them (the
wrong precision, the optimizer left at fastai's, the BatchNorm refresh missing) would spoil a GPU
run that CI never makes. A learner whose loaders merely claim to be on a GPU is enough: nothing
moves to the device before training starts.
"""
import json
import sys
import types
from pathlib import Path

import pytest
import torch
from fastai.callback.fp16 import MixedPrecision
from fastai.vision.all import CrossEntropyLossFlat, DataLoaders, Learner, TfmdDL, nn

from course_utils.training import RefreshBatchNormStats, torch_adamw

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'bench'))
from bench_fastimage import apply_settings  # noqa: E402


@pytest.fixture
def on_pretend_gpu(monkeypatch):
    "PyTorch answers as on a GPU with native bf16; returns a maker of small learners whose loaders say 'cuda'."
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: True)
    def learner():
        items = [(torch.randn(3), 0)] * 4
        dls = DataLoaders(TfmdDL(items, bs=2), TfmdDL(items, bs=2), device='cpu')
        dls.device = torch.device('cuda')
        return Learner(dls, nn.Linear(3, 2), loss_func=CrossEntropyLossFlat())
    return learner


ARGS = types.SimpleNamespace(device=torch.device('cuda'))


@pytest.mark.parametrize('cfg, mixed, opt', [
    (dict(training='fast', precision='bf16'), 'bf16', 'adamw'),
    (dict(training='fast', precision='bf16', fused=True), 'bf16', 'fused'),
    (dict(training='fast', precision='fp16', refresh_bn=True), 'fp16', 'adamw'),
    (dict(training='stock', precision='bf16'), 'bf16', 'fastai'),
    (dict(training='stock', precision='fp32'), None, 'fastai'),
])
def test_each_configuration_gets_one_precision_and_its_optimizer(on_pretend_gpu, cfg, mixed, opt):
    learn = apply_settings(on_pretend_gpu(), cfg, ARGS)
    precisions = [cb.amp_mode.value for cb in learn.cbs if isinstance(cb, MixedPrecision)]
    assert precisions == ([mixed] if mixed else [])
    made = learn.opt_func(learn.model.parameters(), lr=1e-3)
    kind = 'fastai' if not hasattr(made, 'opt') else 'fused' if made.opt.defaults.get('fused') else 'adamw'
    assert kind == opt
    assert (learn.opt_func is torch_adamw) == (opt == 'adamw')
    assert any(isinstance(cb, RefreshBatchNormStats) for cb in learn.cbs) == bool(cfg.get('refresh_bn'))


def test_quick_cpu_run_writes_its_report(tmp_path):
    "The benchmark's CPU smoke run (`--quick --variants`) goes through stock and fast and writes the JSON and the table it promises."
    from bench_fastimage import main
    main(['--quick', '--variants', '--out', str(tmp_path), '--cache', str(tmp_path)])
    res = json.loads((tmp_path / 'bench_fastimage.json').read_text())
    assert res['errors'] == {}
    assert {'stock_w2', 'fast_w2', 'fastai_loop', 'decode_capacity'} <= set(res['results'])
    assert all(res['results'][k]['data_img_s'] > 0 for k in ('stock_w2', 'fast_w2'))
    table = (tmp_path / 'bench_fastimage.md').read_text()
    assert '| data only, images/s | 2 |' in table and '| fine_tune(1), seconds | 2 |' in table
