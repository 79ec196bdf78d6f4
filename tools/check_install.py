"""Check that every requirement of course-utils and of the given extras is installed, satisfied and importable.

Usage: python tools/check_install.py dev      (or lab,app; the same argument as tools/setup_env.sh)
A requirement that pip left out, at a version outside its range, or that fails to import is named, and the
script exits with status 1, so that a broken set-up stops before any test can be skipped for want of it.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import sys
import tomllib
from functools import cache
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def requirements(extras: set[str]) -> list[Requirement]:
    "The project's requirements with `extras`, its own extras (`course-utils[app,lab]`) expanded."
    project = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
    reqs, todo, seen = [Requirement(r) for r in project['dependencies']], list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen: continue
        seen.add(extra)
        for r in map(Requirement, project['optional-dependencies'][extra]):
            if r.name == project['name']: todo.extend(r.extras)
            else: reqs.append(r)
    return reqs


@cache
def _top_level_modules() -> dict[str, list[str]]: return md.packages_distributions()


def problems(req: Requirement) -> list[str]:
    "What is wrong with `req` in this environment: missing, a version outside its range, or a module that fails to import."
    try: dist = md.distribution(req.name)
    except md.PackageNotFoundError: return [f"{req}: not installed"]
    if not req.specifier.contains(dist.version, prereleases=True): return [f"{req}: {dist.version} is installed"]
    modules = {m for m, dists in _top_level_modules().items() if dist.metadata['Name'] in dists and not m.startswith('_')}
    out = []
    for m in sorted(modules):
        try: importlib.import_module(m)
        except Exception as e: out.append(f"{req}: `import {m}` fails: {type(e).__name__}: {e}")
    return out


if __name__ == '__main__':
    extras = {e for e in (sys.argv[1] if len(sys.argv) > 1 else '').split(',') if e}
    found = [p for r in requirements(extras) for p in problems(r)]
    import course_utils  # noqa: F401  (the project itself, installed in editable mode)
    if found: sys.exit('The environment is incomplete:\n  ' + '\n  '.join(found))
    print(f"All {len(requirements(extras))} requirements of course-utils[{','.join(sorted(extras))}] are installed and import.")
