"""Lesson 1 on the samples: cats and dogs, the first layer's filters, `doc`, then the tour of four more kinds of
data, each model clearly beating the baseline the lesson prints beside it."""
import re

import pytest

from notebook_runner import run_notebook

LESSON = 'lessons/01_intro.ipynb'
pytestmark = pytest.mark.notebook(LESSON)
PCT = r'([\d.]+)%'


@pytest.fixture(scope='module')
def run():
    run = run_notebook(LESSON)
    assert run.error is None, run.error
    return run


def printed(run, pattern: str) -> list[float]:
    "The numbers in the line the lesson printed that matches `pattern`."
    m = re.search(pattern, run.outputs_text())
    assert m, f'the lesson printed no line matching {pattern!r}'
    return [float(g) for g in m.groups()]


def test_cats_and_dogs_beat_chance(run):
    rows = [r for r in run.results if r['lesson'] == '01_intro']
    assert [r['data'] for r in rows] == ['sample']
    # A third of the pets are cats: always answering "dog" gives an error rate of about 0.32.
    assert run.metric('error_rate') < 0.15


def test_first_layer_filters_are_drawn(run):
    assert any('image/png' in o.get('data', {}) for o in run.code_cell('learn.model[0][0].weight').outputs)


def test_doc_shows_the_signature_and_docstring(run):
    shown = ''.join(str(o.get('data', {})) + o.get('text', '') for o in run.code_cell('doc(learn.predict)').outputs)
    assert 'predict' in shown and 'with_input' in shown, shown[:500]


def test_every_tour_uses_its_sample(run):
    for name in ('camvid_tiny', 'imdb_sample', 'adult_sample', 'movie_lens_sample'):
        assert f'Using the offline sample of {name} (COURSE_SAMPLE=1)' in run.outputs_text()


def test_segmentation_beats_painting_every_pixel_alike(run):
    acc, commonest = printed(run, rf'Segmentation: {PCT} of the validation pixels right; painting them all with the commonest class: {PCT}\.')
    assert 20 < commonest < 45  # road, sidewalk or sky: no class covers most of a street scene
    assert acc > commonest + 25


def test_text_classifier_beats_the_commoner_label(run):
    acc, commoner = printed(run, rf'Text: accuracy {PCT}; always answering the commoner label: {PCT}\.')
    assert 50 <= commoner < 60  # the sample's reviews are half positive
    assert acc > commoner + 20


def test_tabular_model_beats_the_commoner_salary_class(run):
    acc, commoner = printed(run, rf'Tabular: accuracy {PCT}; always answering the commoner salary class: {PCT}\.')
    assert 60 < commoner < 80  # about 30% of the sample earn >=50k
    assert acc > commoner + 5


def test_collab_model_beats_the_average_rating(run):
    mse, guess = printed(run, r'Collaborative filtering: mean squared error ([\d.]+); predicting the average rating: ([\d.]+)\.')
    assert 0.8 < guess < 1.3
    assert mse < 0.85 * guess
