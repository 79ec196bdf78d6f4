"""Execute notebooks the way a learner would (top to bottom, in a fresh kernel) in sample mode.

Each notebook runs once per test session; tests ask for its results (the ledger lines it wrote,
its wall time, the executed notebook) through `run_notebook`, so several tests can check one run.
`run_in_background` starts the notebooks a session will need while other tests run: a kernel is a
process of its own, so the CPU that a waiting test would leave idle trains a lesson instead.
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
ARTIFACTS = Path(os.environ.get('COURSE_ARTIFACTS', ROOT / 'artifacts'))
CELL_TIMEOUT_S = 1200


@dataclass
class NotebookRun:
    path: Path
    seconds: float
    results: list[dict] = field(default_factory=list)
    error: str | None = None
    nb: nbformat.NotebookNode | None = None  # the executed notebook

    def outputs_text(self) -> str:
        "All text the notebook printed or displayed."
        return '\n'.join(out.get('text', '') if out.output_type == 'stream' else out.get('data', {}).get('text/plain', '')
                         for cell in self.nb.cells for out in cell.get('outputs', []))

    def code_cell(self, code: str) -> nbformat.NotebookNode:
        "The executed code cell whose source contains `code`."
        return next(c for c in self.nb.cells if c.cell_type == 'code' and code in c.source)

    def metric(self, metric: str, lesson: str | None = None) -> float:
        "The value of `metric` that the notebook reported (the last one, if reported twice)."
        rows = [r for r in self.results if r['metric'] == metric and (lesson is None or r['lesson'] == lesson)]
        assert rows, f"{self.path.name} reported no {metric!r}; it reported {[r['metric'] for r in self.results]}"
        return rows[-1]['value']


_runs: dict[Path, NotebookRun] = {}
_workdir: Path | None = None


def _fastai_home(workdir: Path) -> Path: return workdir / 'fastai_home'


def sample_env(workdir: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    "Environment for a notebook kernel, from `base` (default: this process's): samples only, no network, caches in `workdir`."
    env = {k: v for k, v in (os.environ if base is None else base).items() if k != 'MPLBACKEND'}  # kernels draw plots inline
    env.update(COURSE_SAMPLE='1', COURSE_OFFLINE='1', IN_TEST='1',
               FASTAI_HOME=str(_fastai_home(workdir)), TORCH_HOME=str(workdir / 'torch_home'),
               PYTHONWARNINGS='ignore::FutureWarning')
    return env


def notebooks_fastai_home() -> Path:
    "The FASTAI_HOME the notebooks run with: their samples, models and caches."
    assert _workdir is not None, 'set_workdir() first (conftest does this)'
    return _fastai_home(_workdir)


def set_workdir(path: Path):
    global _workdir
    _workdir = path


_background: dict[Path, Future] = {}


def run_in_background(rel_paths: list[str], kernel_threads: int):
    "Start running `rel_paths` one after another in a background thread, each kernel using `kernel_threads` CPU threads."
    assert _workdir is not None, 'set_workdir() first (conftest does this)'
    base = dict(os.environ, OMP_NUM_THREADS=str(kernel_threads))  # taken now: tests may change os.environ meanwhile
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix='notebooks')
    for rel in rel_paths:
        path = (NBS / rel).resolve()
        if path not in _background and (path, None) not in _runs: _background[path] = pool.submit(_execute, path, None, base)
    pool.shutdown(wait=False)


def run_notebook(rel_path: str, fastai_home: Path | None = None) -> NotebookRun:
    "Run `nbs/<rel_path>` once (cached for the session) and return what happened; `fastai_home` runs it apart from the shared one."
    path = (NBS / rel_path).resolve()
    if fastai_home is None and path in _background: _runs[path, None] = _background.pop(path).result()
    if (path, fastai_home) not in _runs: _runs[path, fastai_home] = _execute(path, fastai_home)
    return _runs[path, fastai_home]


def _execute(path: Path, fastai_home: Path | None, base: dict[str, str] | None = None) -> NotebookRun:
    assert _workdir is not None, 'set_workdir() first (conftest does this)'
    results_file = _workdir / 'results' / (path.stem + ('' if fastai_home is None else '-' + fastai_home.name) + '.jsonl')
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.unlink(missing_ok=True)
    env = sample_env(_workdir, base) | {'COURSE_RESULTS': str(results_file)}
    if fastai_home is not None: env['FASTAI_HOME'] = str(fastai_home)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name='python3',
                            resources={'metadata': {'path': str(path.parent)}})
    t0 = time.perf_counter()
    error = None
    try: client.execute(env=env)
    except CellExecutionError as e: error = str(e)
    seconds = time.perf_counter() - t0
    out = ARTIFACTS / 'notebooks' / path.relative_to(NBS)
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out)  # executed copy, with plots, for people to look at
    results = [json.loads(l) for l in results_file.read_text().splitlines()] if results_file.exists() else []
    return NotebookRun(path, seconds, results, error, nb)


def all_runs() -> list[NotebookRun]: return list(_runs.values())
