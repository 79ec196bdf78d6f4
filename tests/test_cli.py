"""The `course` command from the outside: `course run` on a lesson that fails, `course report` on a small ledger, and
`course lab` started as this test's user (root in a container) with JupyterLab options, checked in headless Chromium."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from browser import CHROMIUM, NOT_LOOPBACK, launch_options
from notebook_runner import ARTIFACTS, ROOT
from optional import require
from course_utils.cli import free_port

COURSE = [sys.executable, '-c', 'import sys; from course_utils.cli import main; sys.exit(main())']  # the `course` script's code
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never send 127.0.0.1 to a proxy


def course(*args, cwd: Path = ROOT, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    "Run `course *args` in `cwd` with this checkout's package, as a learner would from a terminal."
    env = {**os.environ, **(env or {}), 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]).rstrip(os.pathsep)}
    return subprocess.run([*COURSE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- course run
def test_run_shows_progress_saves_html_and_names_the_failing_cell(tmp_path):
    "A lesson whose third code cell fails: exit status 1, the cell named, what ran before it shown and saved."
    lessons = tmp_path / 'nbs' / 'lessons'  # a checkout of its own, so that `course run 99` finds this lesson
    lessons.mkdir(parents=True)
    nbformat.write(nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell('# A lesson that breaks\n\n## Warming up'),
        nbformat.v4.new_code_cell("print('step one')"),
        nbformat.v4.new_code_cell("import json, os\nrow = dict(lesson='01_intro', metric='error_rate', value=0.25, book=0.0027, data='sample')\n"
                                  "with open(os.environ['COURSE_RESULTS'], 'a') as fh: fh.write(json.dumps(row) + '\\n')"),
        nbformat.v4.new_markdown_cell('## Breaking'),
        nbformat.v4.new_code_cell('1 / 0'),
        nbformat.v4.new_code_cell("print('never printed')"),
    ]), lessons / '99_breaks.ipynb')
    r = course('run', '99', cwd=tmp_path, env={'COURSE_RESULTS': ''})
    out = r.stdout
    assert r.returncode == 1, out + r.stderr
    assert re.search(r'\[0:\d\d\] ## Warming up\nstep one\n', out), out
    assert 'FAILED at cell 3/4 (section "Breaking"): 1 / 0' in out and 'ZeroDivisionError: division by zero' in out, out
    assert 'never printed' not in out
    assert '[IPKernelApp]' not in out + r.stderr  # the kernel process's own warnings go to its log, not between the lines
    # the row the lesson added to the default ledger, as a table
    assert re.search(r'01_intro\s+error_rate\s+0\.25\s+0\.0027\s+sample', out), out
    runs = tmp_path / 'artifacts' / 'runs'
    assert f'As HTML, with its plots: {runs / "99_breaks.html"}' in out
    page = (runs / '99_breaks.html').read_text()
    assert 'step one' in page and 'ZeroDivisionError' in page
    assert json.loads((runs / 'results.jsonl').read_text())['value'] == 0.25
    assert f"The kernel's own log: {runs / '99_breaks.kernel.log'}" in out and (runs / '99_breaks.kernel.log').exists()
    executed = nbformat.read(runs / '99_breaks.ipynb', as_version=4)
    assert executed.cells[1].outputs[0].text == 'step one\n' and executed.cells[5].get('outputs') == []


# ---------------------------------------------------------------- course report
ROWS = [
    dict(lesson='01_intro', metric='error_rate', value=0.0031, book=0.0027, data='real'),
    dict(lesson='01_intro', metric='error_rate', value=0.1875, book=0.0027, data='sample'),
    dict(lesson='04_mnist_basics', metric='accuracy_simple_net', value=0.9412, book=0.9828, data='sample'),
    dict(lesson='06_multicat', metric='biwi_valid_mse', value=0.0023, book=4e-5, data='sample'),
    dict(lesson='08_collab', metric='mse_dotproductbias', value=0.8874, book=0.8926, data='real'),
]


def test_report_prints_every_row_and_draws_one_png(tmp_path):
    ledger = tmp_path / 'results.jsonl'
    ledger.write_text(''.join(json.dumps(r) + '\n' for r in ROWS))
    png = tmp_path / 'figures' / 'report.png'
    r = course('report', str(ledger), '--out', str(png))
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f'5 results from {ledger}:' and lines[-1] == f'Figure: {png}'
    table = lines[3:-1]  # after the title, the header and its rule
    assert len(table) == len(ROWS)
    for line, row in zip(table, ROWS):
        assert line.split() == [row['lesson'], row['metric'], f"{row['value']:.4g}", f"{row['book']:.4g}", row['data']], line
    with Image.open(png) as im:
        im.verify()  # a whole, valid PNG
    with Image.open(png) as im:
        assert im.format == 'PNG' and im.width >= 1000 and im.height >= 600
        # the real runs (blue dots) and the sample runs (orange squares) are both drawn
        colours = {c for _, c in im.convert('RGB').getcolors(maxcolors=1 << 20) or []}
        assert (31, 119, 180) in colours and (255, 127, 14) in colours


def test_report_without_a_ledger_says_how_to_make_one(tmp_path):
    r = course('report', str(tmp_path / 'missing.jsonl'))
    assert r.returncode == 1 and 'No results ledger at' in r.stderr and 'course run' in r.stderr


# ---------------------------------------------------------------- course lab
SHOT = ARTIFACTS / 'screenshots' / 'course_lab.png'
HAVE_BROWSER = Path(CHROMIUM).exists() and importlib.util.find_spec('playwright') is not None


@require(HAVE_BROWSER, f'a browser for the JupyterLab test (Chromium at {CHROMIUM} and Playwright)')
def test_lab_starts_with_jupyterlab_options_and_shows_the_upload_widget(tmp_path):
    "`course lab --no-browser --port P --IdentityProvider.token=T ...` as this user (root in a container); an upload widget renders."
    import psutil
    from playwright.sync_api import TimeoutError as PlaywrightTimeout, expect, sync_playwright
    folder, home = tmp_path / 'notebooks', tmp_path / 'jupyter'
    folder.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import ipywidgets\nipywidgets.FileUpload(accept='image/*')")])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, folder / 'upload.ipynb')
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]).rstrip(os.pathsep),
           **{k: str(home / v) for k, v in dict(JUPYTER_CONFIG_DIR='config', JUPYTER_DATA_DIR='data', JUPYTER_RUNTIME_DIR='runtime',
                                                 IPYTHONDIR='ipython', JUPYTERLAB_SETTINGS_DIR='settings',
                                                 JUPYTERLAB_WORKSPACES_DIR='workspaces', XDG_CACHE_HOME='cache').items()}}
    log = SHOT.with_name('course_lab.log')
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, 'wb') as out:
        lab = subprocess.Popen([*COURSE, 'lab', '--no-browser', '--port', str(port), f'--IdentityProvider.token={token}',
                                '--ServerApp.ip=127.0.0.1', '--ServerApp.port_retries=0', f'--ServerApp.root_dir={folder}'],
                               cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    base, kernels = f'http://127.0.0.1:{port}', []
    try:
        with sync_playwright() as p:  # the browser starts while JupyterLab does
            ctx = p.chromium.launch_persistent_context(**launch_options(tmp_path / 'chromium-profile', viewport={'width': 1200, 'height': 800}))
            ctx.route(NOT_LOOPBACK, lambda route: route.abort())  # hermetic
            try:
                deadline = time.monotonic() + 45
                while True:
                    assert lab.poll() is None, f'JupyterLab exited (rc={lab.returncode}):\n{log.read_text()[-3000:]}'
                    try:
                        with NO_PROXY.open(f'{base}/api/status?token={token}', timeout=2) as r:
                            if r.status == 200: break
                    except OSError: pass
                    assert time.monotonic() < deadline, f'JupyterLab not answering after 45 s:\n{log.read_text()[-3000:]}'
                    time.sleep(0.25)
                page = ctx.new_page()
                page.goto(f'{base}/lab/tree/upload.ipynb?token={token}', timeout=60_000)
                page.locator('.jp-Notebook .jp-CodeCell .cm-content').first.wait_for(state='visible', timeout=45_000)
                upload = page.locator('.jp-OutputArea .jupyter-widgets.widget-upload')
                try:
                    for attempt in (1, 2):  # a first run can go to a kernel that JupyterLab replaces as it starts
                        page.locator('.jp-StatusBar-TextItem', has_text='| Idle').wait_for(timeout=45_000)  # a kernel is connected
                        page.locator('.jp-Notebook .jp-CodeCell .cm-content').first.click()
                        page.keyboard.press('Shift+Enter')
                        try: upload.wait_for(state='visible', timeout=20_000)
                        except PlaywrightTimeout:
                            if attempt == 2: raise
                        else: break
                    expect(upload).to_contain_text('Upload')
                    kernels = psutil.Process(lab.pid).children(recursive=True)
                finally: page.screenshot(path=str(SHOT))
            finally: ctx.close()
    finally:
        lab.terminate()  # `course lab` became JupyterLab, which shuts its kernels down on SIGTERM
        try: lab.wait(timeout=30)
        except subprocess.TimeoutExpired:
            lab.kill()
            lab.wait()
        _, alive = psutil.wait_procs(kernels, timeout=15)
        for k in alive: k.kill()
    assert kernels and not alive, f'kernels left running: {alive}'
    if os.geteuid() == 0: assert 'Running as root is not recommended' not in log.read_text()


# ---------------------------------------------------------------- start.sh
@pytest.mark.parametrize('args, course_gets', [
    ([], ['run', '01_intro']),
    (['04', '--sample'], ['run', '04', '--sample']),
    (['lab', '--no-browser', '--port', '8899'], ['lab', '--no-browser', '--port', '8899']),
    (['report'], ['report']),
])
def test_start_sh_hands_its_arguments_to_course(tmp_path, args, course_gets):
    "start.sh, with its set-up and the `course` command replaced by stand-ins that only record what they were given."
    shutil.copy(ROOT / 'start.sh', tmp_path / 'start.sh')
    for stub, line in (('tools/setup_env.sh', 'echo "setup $*" >> "$(dirname "$0")/../calls"'),
                       ('.venv/bin/course', 'printf "%s\\n" "$@" > "$(dirname "$0")/../../args"')):
        (tmp_path / stub).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / stub).write_text(f'#!/usr/bin/env bash\n{line}\n')
        (tmp_path / stub).chmod(0o755)
    r = subprocess.run(['bash', str(tmp_path / 'start.sh'), *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / 'calls').read_text() == 'setup lab,app\n'
    assert (tmp_path / 'args').read_text().splitlines() == course_gets
