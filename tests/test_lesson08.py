"""Lesson 8 (collaborative filtering): the models learn the sample's hidden factors, and real data is used when cached."""
import pandas as pd
import pytest
from fastai.data.external import URLs

from course_utils import core
from course_utils.data import course_data, real_path
from course_utils.ledger import BOOK
from course_utils.samples import build_ml_100k, ml100k_sample_noise
from notebook_runner import notebooks_fastai_home, run_notebook

MODELS = ['mse_dotproductbias_wd', 'mse_collab_learner', 'mse_collab_nn']
USES_LESSON = pytest.mark.notebook('lessons/08_collab.ipynb')


@pytest.fixture(scope='module')
def run():
    run = run_notebook('lessons/08_collab.ipynb')
    assert run.error is None, run.error
    return run


@pytest.fixture(scope='module')
def rating_variance(run):
    "MSE of always predicting the mean rating, on the sample's ratings the lesson used."
    return float(read_ratings(notebooks_fastai_home() / 'samples' / 'ml-100k').rating.var())


def read_ratings(path) -> pd.DataFrame:
    return pd.read_csv(path / 'u.data', delimiter='\t', header=None, names=['user', 'movie', 'rating', 'timestamp'])


@USES_LESSON
def test_reports_every_model_on_sample_data(run):
    reported = {r['metric']: r for r in run.results if r['lesson'] == '08_collab'}
    assert set(reported) == {m for lesson, m in BOOK if lesson == '08_collab'} >= set(MODELS)
    assert all(r['data'] == 'sample' for r in reported.values())


@USES_LESSON
@pytest.mark.parametrize('metric', MODELS)
def test_models_approach_the_noise_floor(run, rating_variance, metric):
    noise = ml100k_sample_noise()
    mse = run.metric(metric)
    assert mse > noise - 0.05, f'{metric} {mse:.3f} below the noise floor {noise:.3f}: the split leaks'
    assert mse < noise + 0.25, f'{metric} {mse:.3f} not near the noise floor {noise:.3f}'
    assert mse < 0.75 * rating_variance, f'{metric} {mse:.3f} vs predicting the mean {rating_variance:.3f}'


def test_cached_real_ml100k_is_used_without_network(fastai_home, monkeypatch):
    "With MovieLens in fastai's cache (real layout), the lesson's first cells read it, offline."
    monkeypatch.setenv('COURSE_OFFLINE', '1')
    cached = build_ml_100k(real_path(URLs.ML_100k), n_users=30, n_movies=40, n_ratings=300, seed=7)
    path = course_data(URLs.ML_100k)
    assert path == cached == fastai_home / 'data' / 'ml-100k'
    assert core._data_kinds['ml-100k'] == 'real' and not core.using_sample_data()
    ratings = read_ratings(path)
    movies = pd.read_csv(path / 'u.item', delimiter='|', encoding='latin-1', usecols=(0, 1), names=('movie', 'title'), header=None)
    assert len(ratings.merge(movies)) == 300 and ratings.user.nunique() <= 30
    assert not (fastai_home / 'samples').exists(), 'a sample was built although real data was cached'
