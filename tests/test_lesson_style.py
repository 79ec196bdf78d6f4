"""The lessons read like the book: what differs on the sample sits in settings cells, never inside a training or learner call."""
import re

import nbformat
import pytest

from notebook_runner import NBS

LESSONS = sorted((NBS / 'lessons').glob('*.ipynb'))
TRAINING_CALL = re.compile(r'\b(fit|fit_one_cycle|fine_tune|lr_find|\w*_learner|Learner)\(')


def calls(source: str):
    "Each statement of `source` that calls a training or learner function, with its continuation lines."
    for stmt in re.split(r'\n(?=\S)', source):
        if TRAINING_CALL.search(stmt): yield stmt


@pytest.mark.parametrize('lesson', LESSONS, ids=lambda p: p.stem)
def test_no_scale_inside_training_or_learner_calls(lesson):
    code = [c.source for c in nbformat.read(lesson, as_version=4).cells if c.cell_type == 'code']
    offending = [stmt for src in code for stmt in calls(src) if 'scale(' in stmt]
    assert not offending, f"{lesson.name}: move these values to a settings cell:\n" + '\n---\n'.join(offending)
