"""Colab and Kaggle, checked here with stand-ins: the lessons' and apps' first cell, their metadata, the badges.

The first code cell is run the way IPython runs it (its `%pip` line turned into a `run_line_magic` call by
IPython's own input transformer) with a recorder in place of IPython, and with a stand-in `google.colab`
module whose `output.enable_custom_widget_manager` records that it was called. No kernel starts.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import shlex
import sys
import types

import pytest
from IPython.core.inputtransformer2 import TransformerManager
from packaging.requirements import Requirement

from notebook_runner import NBS, ROOT
from optional import require

REPO = 'https://github.com/pdl-course/pdl2020'
LESSONS = sorted(p.name for p in (NBS / 'lessons').glob('*.ipynb'))
APPS = sorted(p.name for p in (NBS / 'apps').glob('*.ipynb'))
NOTEBOOKS = [f'lessons/{n}' for n in LESSONS] + [f'apps/{n}' for n in APPS]


def read_nb(rel: str) -> dict: return json.loads((NBS / rel).read_text(encoding='utf-8'))


def first_code_cell(rel: str) -> str:
    return next(''.join(c['source']) for c in read_nb(rel)['cells'] if c['cell_type'] == 'code')


class Recorder:
    "Stands in for IPython (`get_ipython()`) and for Colab's `output` module: it records what the cell asks of them."
    def __init__(self): self.magics, self.widget_manager_calls = [], 0
    def run_line_magic(self, name, line, _stack_depth=1): self.magics.append((name, line))
    def enable_custom_widget_manager(self): self.widget_manager_calls += 1


def run_first_cell(rel: str, monkeypatch, *, colab: bool, kaggle: bool) -> Recorder:
    "Run `rel`'s first code cell as IPython would, on Colab, on Kaggle, or elsewhere."
    rec = Recorder()
    monkeypatch.delitem(sys.modules, 'google.colab', raising=False)
    monkeypatch.delitem(sys.modules, 'google.colab.output', raising=False)
    monkeypatch.delenv('KAGGLE_KERNEL_RUN_TYPE', raising=False)
    if colab:
        colab_mod = types.ModuleType('google.colab')
        colab_mod.output = rec
        monkeypatch.setitem(sys.modules, 'google.colab', colab_mod)
        monkeypatch.setitem(sys.modules, 'google.colab.output', rec)
    if kaggle: monkeypatch.setenv('KAGGLE_KERNEL_RUN_TYPE', 'Interactive')
    code = TransformerManager().transform_cell(first_code_cell(rel))
    exec(compile(code, f'{rel} (first cell)', 'exec'), {'get_ipython': lambda: rec, '__name__': '__main__'})
    return rec


def check_install(rec: Recorder):
    "One `%pip install` of the course's package from its repository, and of nothing else (no torch pin)."
    assert [name for name, _ in rec.magics] == ['pip'], rec.magics
    args = shlex.split(rec.magics[0][1])
    assert args[0] == 'install', args
    reqs = [Requirement(a) for a in args[1:] if not a.startswith('-')]
    assert [(r.name, r.url) for r in reqs] == [('course-utils', f'git+{REPO}')], args
    assert not any(a.startswith(('-c', '--constraint', '-r', '--requirement')) for a in args[1:]), args


@pytest.mark.parametrize('rel', NOTEBOOKS)
def test_first_cell_on_colab_installs_and_enables_the_widget_manager(rel, monkeypatch):
    rec = run_first_cell(rel, monkeypatch, colab=True, kaggle=False)
    check_install(rec)
    assert rec.widget_manager_calls == 1


@pytest.mark.parametrize('rel', NOTEBOOKS)
def test_first_cell_on_kaggle_installs_only(rel, monkeypatch):
    rec = run_first_cell(rel, monkeypatch, colab=False, kaggle=True)
    check_install(rec)
    assert rec.widget_manager_calls == 0


@pytest.mark.parametrize('rel', NOTEBOOKS)
def test_first_cell_elsewhere_does_nothing(rel, monkeypatch):
    rec = run_first_cell(rel, monkeypatch, colab=False, kaggle=False)
    assert rec.magics == [] and rec.widget_manager_calls == 0


@pytest.mark.parametrize('rel', NOTEBOOKS)
def test_metadata_asks_for_python3_and_a_colab_gpu(rel):
    meta = read_nb(rel)['metadata']
    ks = meta.get('kernelspec', {})
    assert (ks.get('name'), ks.get('language')) == ('python3', 'python') and ks.get('display_name'), meta
    assert meta.get('accelerator') == 'GPU', meta
    assert meta.get('colab', {}).get('gpuType') == 'T4' and 'provenance' in meta['colab'], meta


@require(importlib.util.find_spec('nbdev') is not None, 'nbdev')
@pytest.mark.parametrize('rel', NOTEBOOKS)
def test_nbdev_clean_keeps_the_notebook_metadata(rel, monkeypatch):
    "What `nbdev-clean` does to the notebook, with this repository's [tool.nbdev] settings."
    from nbdev.clean import _nbdev_clean
    monkeypatch.chdir(ROOT)
    nb = read_nb(rel)
    cleaned = copy.deepcopy(nb)
    _nbdev_clean(cleaned)
    assert cleaned['metadata'] == nb['metadata']


@pytest.mark.parametrize('name', LESSONS)
def test_lesson_opens_with_colab_and_kaggle_badges(name):
    first = read_nb(f'lessons/{name}')['cells'][0]
    assert first['cell_type'] == 'markdown'
    text = ''.join(first['source'])
    blob = f'{REPO}/blob/main/nbs/lessons/{name}'
    colab = ('[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]'
             f'(https://colab.research.google.com/github/pdl-course/pdl2020/blob/main/nbs/lessons/{name})')
    kaggle = f'[![Open In Kaggle](https://kaggle.com/static/images/open-in-kaggle.svg)](https://kaggle.com/kernels/welcome?src={blob})'
    assert colab in text and kaggle in text, text


def test_readme_lessons_table_has_both_badges():
    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    for name in LESSONS:
        row = next((l for l in readme.splitlines() if l.startswith('|') and f'(nbs/lessons/{name})' in l), '')
        assert 'colab-badge.svg' in row and f'kaggle.com/kernels/welcome?src={REPO}/blob/main/nbs/lessons/{name}' in row, name
