import gc
import os

import pytest
from fastai.data.external import fastai_cfg
from fastcore.xtras import modified_env

from course_utils import core

from notebook_runner import NBS, all_runs, run_in_background, set_workdir

# A data loader's worker is a fork of this process and inherits whatever earlier tests left for the
# garbage collector. Collected in the worker, an ONNX Runtime session hangs for ever (its thread pool's
# condition variables wait on threads the fork did not copy), and the worker with it. Frozen objects
# are never collected: the worker leaves all it inherited to this process.
os.register_at_fork(after_in_child=gc.freeze)


def notebooks_needed(items) -> list[str]:
    "The lessons the selected tests run (a test names its notebook with `@pytest.mark.notebook(path)` or as the `nb` parameter)."
    needed = [m.args[0] for item in items for m in item.iter_markers('notebook')]
    needed += [item.callspec.params['nb'] for item in items if 'nb' in getattr(getattr(item, 'callspec', None), 'params', {})]
    return [nb for nb in dict.fromkeys(needed) if nb.startswith('lessons/')]


def pytest_collection_modifyitems(items):
    "Tests that wait for a lesson (running in the background) go last, so that the others run meanwhile."
    items.sort(key=lambda item: bool(notebooks_needed([item])))  # a stable sort: each group keeps its order


@pytest.fixture(scope='session', autouse=True)
def notebook_workdir(tmp_path_factory, request):
    """One cache of samples and settings shared by every notebook in the session; with two or more CPUs, the
    lessons the session needs run in the background from the start, sharing the CPUs with the other tests."""
    set_workdir(tmp_path_factory.mktemp('course'))
    cpus = os.cpu_count() or 1
    if cpus >= 2 and os.environ.get('COURSE_TEST_BACKGROUND', '1') != '0':
        import torch
        kernel_threads = cpus // 2
        torch.set_num_threads(cpus - kernel_threads)  # two busy processes never ask for more threads than there are CPUs
        run_in_background(notebooks_needed(request.session.items), kernel_threads)
        # The short library notebooks run here, beside the lessons; they and every other process a test starts
        # (app servers, benchmarks) share the CPUs the lessons leave.
        with modified_env(OMP_NUM_THREADS=str(cpus - kernel_threads)): yield
    else: yield



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
