"""Optional test dependencies: a missing one skips its tests on a contributor's machine and fails in CI.

In CI (`CI` set, as `.ci/run` does) everything these tests need is installed by the set-up, so a missing
piece means the set-up broke, and skipping would turn that into a green run that checked less.
"""
from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get('CI', '').lower() in ('1', 'true', 'yes')


def require(available: bool, what: str) -> pytest.MarkDecorator:
    "A skip mark for tests that need `what`; in CI a missing `what` fails the run as soon as the tests are collected."
    if not available and IN_CI: pytest.fail(f"{what} is missing in CI: the set-up should have installed it", pytrace=False)
    return pytest.mark.skipif(not available, reason=f'{what} is missing')
