"""One small bear model per test process, trained on the offline sample and exported for the apps."""
from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path

SAMPLE_ENV = {'COURSE_SAMPLE': '1', 'COURSE_OFFLINE': '1'}


@lru_cache(maxsize=None)
def demo_models_dir() -> Path:
    "A temporary models folder holding `bears/` made by `train_demo_model` on the bears sample (trained once)."
    root = Path(tempfile.mkdtemp(prefix='course-models-'))
    saved = {k: os.environ.get(k) for k in (*SAMPLE_ENV, 'FASTAI_HOME')}
    os.environ.update(SAMPLE_ENV, FASTAI_HOME=str(root / 'fastai_home'))
    from fastai.data.external import fastai_cfg
    from course_utils.core import _data_kinds
    fastai_cfg.cache_clear()  # fastai reads FASTAI_HOME once per process
    try:
        from course_utils.export import train_demo_model
        train_demo_model('bears', root / 'models' / 'bears')  # exactly what `course make-model bears` does offline
    finally:
        for k, v in saved.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
        fastai_cfg.cache_clear()
        _data_kinds.clear()
    return root / 'models'


def sample_bear_photo() -> Path:
    "A good photo from the bears sample the demo model was trained on."
    return next((demo_models_dir().parent / 'fastai_home' / 'samples' / 'bears' / 'grizzly').glob('*.jpg'))
