"""Lesson 2 end to end on the bears sample: search skipped offline, corrupt files found, a model that beats chance."""
import pytest

from notebook_runner import run_notebook

LESSON = 'lessons/02_production.ipynb'
pytestmark = pytest.mark.notebook(LESSON)


def test_lesson_runs_offline_on_the_sample():
    run = run_notebook(LESSON)
    assert run.error is None, run.error
    text = run.outputs_text()
    assert 'Not searching the web (COURSE_SAMPLE=1): using the bears data set instead.' in text


def test_corrupt_downloads_are_found_and_removed():
    run = run_notebook(LESSON)
    # The sample holds three broken downloads (an HTML page, an empty file, a truncated JPEG).
    assert 'Removed 3 files that could not be opened' in run.outputs_text()


def test_bear_classifier_beats_chance():
    run = run_notebook(LESSON)
    assert run.metric('error_rate', lesson='02_production') < 0.35  # guessing among three kinds: 0.67


def test_cleaner_with_no_picks_changes_nothing():
    run = run_notebook(LESSON)
    assert 'Nothing was selected in the cleaner: no file changed.' in run.outputs_text()
