"""Lesson 2 end to end on the bears sample: search skipped offline, corrupt files found, a model that beats chance."""
import nbformat

from notebook_runner import ARTIFACTS, NBS, run_notebook

LESSON = 'lessons/02_production.ipynb'


def outputs_text(rel_path: str) -> str:
    "All text the executed copy of the notebook printed or displayed."
    nb = nbformat.read(ARTIFACTS / 'notebooks' / rel_path, as_version=4)
    parts = []
    for cell in nb.cells:
        for out in cell.get('outputs', []):
            parts.append(out.get('text', '') if out.output_type == 'stream' else out.get('data', {}).get('text/plain', ''))
    return '\n'.join(parts)


def test_lesson_runs_offline_on_the_sample():
    run = run_notebook(LESSON)
    assert run.error is None, run.error
    text = outputs_text(LESSON)
    assert 'Not searching the web (COURSE_SAMPLE=1): using the bears data set instead.' in text


def test_corrupt_downloads_are_found_and_removed():
    run_notebook(LESSON)
    # The sample holds three broken downloads (an HTML page, an empty file, a truncated JPEG).
    assert 'Removed 3 files that could not be opened' in outputs_text(LESSON)


def test_bear_classifier_beats_chance():
    run = run_notebook(LESSON)
    assert run.metric('error_rate', lesson='02_production') < 0.35  # guessing among three kinds: 0.67


def test_cleaner_with_no_picks_changes_nothing():
    run_notebook(LESSON)
    assert 'Nothing was selected in the cleaner: no file changed.' in outputs_text(LESSON)
