"""`pip install course-utils` keeps the torch a learner already has (Colab and Kaggle ship their own, often newer
than ours), checked with pip's own resolver, offline: every installed distribution is copied as an empty stand-in
wheel with its real name, version and requirements, next to stand-ins for a newer torch and torchvision."""
from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
NEWER = {'torch': '2.15.0', 'torchvision': '0.30.0'}  # newer than constraints.txt's, as a runtime may ship


def stand_in(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    "An empty wheel that tells pip it is `name` `version` and needs `requires`."
    dist = f"{canonicalize_name(name).replace('-', '_')}-{version}"
    whl = folder / f'{dist}-py3-none-any.whl'
    meta = '\n'.join(['Metadata-Version: 2.1', f'Name: {name}', f'Version: {version}'] + [f'Requires-Dist: {r}' for r in requires])
    with zipfile.ZipFile(whl, 'w') as z:
        z.writestr(f'{dist}.dist-info/METADATA', meta + '\n')
        z.writestr(f'{dist}.dist-info/WHEEL', 'Wheel-Version: 1.0\nGenerator: stand-in\nRoot-Is-Purelib: true\nTag: py3-none-any\n')
        z.writestr(f'{dist}.dist-info/RECORD', '')
    return whl


def pip(*args, python: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, '-m', 'pip', '--python', str(python), '--disable-pip-version-check', *args]
    return subprocess.run(cmd, capture_output=True, text=True, env={'PIP_CONFIG_FILE': '/dev/null', 'PATH': '/usr/bin:/bin'})


@pytest.fixture(scope='module')
def wheelhouse(tmp_path_factory) -> Path:
    "Stand-ins for everything installed here, the project with the requirements pyproject.toml declares, and a newer torch."
    folder = tmp_path_factory.mktemp('wheelhouse')
    for d in metadata.distributions():
        if canonicalize_name(d.metadata['Name']) != 'course-utils':
            stand_in(folder, d.metadata['Name'], d.version, d.requires or [])
    project = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
    stand_in(folder, 'course-utils', '0.0.0', project['dependencies'])
    stand_in(folder, 'torch', NEWER['torch'], [r for r in metadata.requires('torch') or []])
    stand_in(folder, 'torchvision', NEWER['torchvision'], [f"torch=={NEWER['torch']}", 'numpy', 'pillow'])
    return folder


@pytest.fixture
def runtime_with_newer_torch(tmp_path, wheelhouse) -> Path:
    "A Python environment that already holds the newer torch and torchvision, as a Colab runtime would."
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(tmp_path / 'env')], check=True)
    python = tmp_path / 'env' / 'bin' / 'python'
    done = pip('install', '--no-index', '--no-deps', *[str(w) for w in wheelhouse.glob('torch*-0.30.0-*.whl')],
               *[str(w) for w in wheelhouse.glob('torch-2.15.0-*.whl')], python=python)
    assert done.returncode == 0, done.stderr
    return python


def test_installing_the_package_keeps_a_newer_torch(runtime_with_newer_torch, wheelhouse, tmp_path):
    report = tmp_path / 'report.json'
    done = pip('install', '--dry-run', '--no-index', '--find-links', str(wheelhouse), '--report', str(report),
               'course-utils', python=runtime_with_newer_torch)
    assert done.returncode == 0, done.stderr[-3000:]
    planned = {canonicalize_name(i['metadata']['name']): i['metadata']['version'] for i in json.loads(report.read_text())['install']}
    assert 'fastai' in planned  # the resolver did plan the course's requirements
    assert 'torch' not in planned and 'torchvision' not in planned, f"pip would replace the runtime's torch: {planned.get('torch')}"
