"""Lesson 4 (MNIST basics): every model in the notebook learns on the sample, and real data is picked up when cached."""
import pytest
from fastai.data.external import URLs

from course_utils import core
from course_utils.data import course_data, sample_path
from course_utils.ledger import BOOK
from course_utils.samples import build_mnist_sample
from notebook_runner import run_notebook

LESSON = 'lessons/04_mnist_basics.ipynb'
USES_LESSON = pytest.mark.notebook(LESSON)


@pytest.fixture(scope='module')
def lesson():
    run = run_notebook(LESSON)
    assert run.error is None, run.error
    return run


@USES_LESSON
def test_pixel_similarity_baseline_beats_chance(lesson):
    assert lesson.metric('accuracy_pixel_similarity') > 0.8


@USES_LESSON
@pytest.mark.parametrize('metric', ['accuracy_linear_scratch', 'accuracy_linear_learner',
                                    'accuracy_simple_net', 'accuracy_resnet18'])
def test_trained_models_beat_090(lesson, metric):
    assert lesson.metric(metric) > 0.90


@USES_LESSON
def test_every_model_the_book_measures_is_reported_on_the_sample(lesson):
    rows = {r['metric']: r for r in lesson.results if r['lesson'] == '04_mnist_basics'}
    assert set(rows) == {m for lesson_name, m in BOOK if lesson_name == '04_mnist_basics'}
    assert all(r['data'] == 'sample' for r in rows.values())


def test_cached_real_mnist_sample_is_used_offline(fastai_home, monkeypatch, capsys):
    "With MNIST_SAMPLE in fastai's cache, the lesson's first call returns it, offline, and records it as real."
    build_mnist_sample(fastai_home / 'data' / 'mnist_sample')  # a stand-in with the real layout
    monkeypatch.setenv('COURSE_OFFLINE', '1')
    path = course_data(URLs.MNIST_SAMPLE)
    assert path == fastai_home / 'data' / 'mnist_sample'
    assert core._data_kinds == {'mnist_sample': 'real'}
    assert not core.using_sample_data() and core.scale(40, sample=3) == 40  # the book's settings apply
    assert not sample_path(URLs.MNIST_SAMPLE).exists()
    assert 'offline sample' not in capsys.readouterr().out
    assert sorted(p.name for p in (path / 'train').iterdir()) == ['3', '7']
