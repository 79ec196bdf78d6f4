"""One small bear model per test process, trained on the offline sample and exported for the apps."""
from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

from fastcore.xtras import modified_env

SAMPLE_ENV = {'COURSE_SAMPLE': '1', 'COURSE_OFFLINE': '1'}


@lru_cache(maxsize=None)
def demo_models_dir() -> Path:
    "A temporary models folder holding `bears/` made by `train_demo_model` on the bears sample (trained once)."
    root = Path(tempfile.mkdtemp(prefix='course-models-'))
    from fastai.data.external import fastai_cfg
    from course_utils.core import _data_kinds
    from course_utils.export import train_demo_model
    with modified_env(**SAMPLE_ENV, FASTAI_HOME=str(root / 'fastai_home')):
        fastai_cfg.cache_clear()  # fastai reads FASTAI_HOME once per process
        try: train_demo_model('bears', root / 'models' / 'bears')  # exactly what `course make-model bears` does offline
        finally:
            fastai_cfg.cache_clear()
            _data_kinds.clear()
    return root / 'models'


def sample_bear_photo() -> Path:
    "A good photo from the bears sample the demo model was trained on."
    return next((demo_models_dir().parent / 'fastai_home' / 'samples' / 'bears' / 'grizzly').glob('*.jpg'))
