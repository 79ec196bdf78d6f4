"""Headless Chromium for the app tests: where it is, how it starts, and what it may reach (bench/benchlib.py keeps its own copy for the serving benchmark: neither folder imports the other)."""
from __future__ import annotations

import os
import re
from pathlib import Path

CHROMIUM = os.environ.get('CHROMIUM_PATH', '/usr/bin/chromium')
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update', '--disable-sync']
NOT_LOOPBACK = re.compile(r'^https?://(?!127\.0\.0\.1[:/])')  # a page's requests to anywhere else are aborted


def launch_options(profile: Path, **kwargs) -> dict:
    "Arguments for Playwright's `chromium.launch_persistent_context` (sync or async) with a fresh `profile` folder."
    return dict(user_data_dir=str(profile), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, **kwargs)
