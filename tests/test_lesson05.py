"""Pet breeds (chapter 5): the lesson learns 37 breeds on the sample.

The cross-entropy checks (by hand == `F.cross_entropy` == the learner's loss) are asserts inside the
notebook, so the notebook's run in test_notebooks.py has passed them (as it has the ethics lesson's
feedback-loop check).
"""
import pytest

from notebook_runner import run_notebook

CHANCE_ERROR_37 = 36 / 37  # guessing among 37 breeds


@pytest.mark.notebook('lessons/05_pet_breeds.ipynb')
def test_pet_breeds_runs_and_beats_chance():
    run = run_notebook('lessons/05_pet_breeds.ipynb')
    assert run.error is None, run.error
    errors = {m: run.metric(m) for m in ('error_rate_fine_tune2', 'error_rate_unfrozen', 'error_rate_discriminative')}
    assert all(0 <= e <= 1 for e in errors.values()), errors
    # from random weights, on 16 pictures per breed: far from the book, but clearly learned
    assert min(errors.values()) < 0.7, errors
    assert errors['error_rate_discriminative'] < CHANCE_ERROR_37 - 0.2, errors

