import gc
import os

import pytest
from fastai.data.external import fastai_cfg

from course_utils import core

from notebook_runner import NBS, all_runs, set_workdir

# A data loader's worker is a fork of this process and inherits whatever earlier tests left for the
# garbage collector. Collected in the worker, an ONNX Runtime session hangs for ever (its thread pool's
# condition variables wait on threads the fork did not copy), and the worker with it. Frozen objects
# are never collected: the worker leaves all it inherited to this process.
os.register_at_fork(after_in_child=gc.freeze)


@pytest.fixture(scope='session', autouse=True)
def notebook_workdir(tmp_path_factory):
    "One cache of samples and settings shared by every notebook in the session."
    set_workdir(tmp_path_factory.mktemp('course'))



@pytest.fixture(scope='session', autouse=True)
def private_cache(tmp_path_factory):
    "Keep ONNX Runtime's optimised graphs (tests, notebooks, app servers) out of the user's ~/.cache."
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('XDG_CACHE_HOME', str(tmp_path_factory.mktemp('cache')))
        yield


@pytest.fixture
def fastai_home(tmp_path, monkeypatch):
    "A private FASTAI_HOME with samples and the network not forced either way, for data-layer tests."
    monkeypatch.setenv('FASTAI_HOME', str(tmp_path / 'fastai_home'))
    for var in ('COURSE_SAMPLE', 'COURSE_OFFLINE'): monkeypatch.delenv(var, raising=False)
    core._data_kinds.clear()
    fastai_cfg.cache_clear()  # fastai reads FASTAI_HOME once per process
    yield tmp_path / 'fastai_home'
    core._data_kinds.clear()
    fastai_cfg.cache_clear()


def pytest_terminal_summary(terminalreporter):
    runs = sorted(all_runs(), key=lambda r: str(r.path))
    if not runs: return
    tr = terminalreporter
    tr.section('notebook times (sample mode, this machine)')
    for r in runs:
        tr.write_line(f"{r.seconds:7.1f} s  {r.path.relative_to(NBS)}{'  FAILED' if r.error else ''}")
    tr.write_line(f"{sum(r.seconds for r in runs):7.1f} s  all notebooks")
