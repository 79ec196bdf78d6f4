"""Lesson 6 (multi-label classification, image regression): both models beat the baselines that ignore the image."""
import numpy as np
import pandas as pd
import pytest

from course_utils.ledger import BOOK
from notebook_runner import notebooks_fastai_home, run_notebook


pytestmark = pytest.mark.notebook('lessons/06_multicat.ipynb')


@pytest.fixture(scope='module')
def run():
    run = run_notebook('lessons/06_multicat.ipynb')
    assert run.error is None, run.error
    return run


@pytest.fixture(scope='module')
def no_label_accuracy(run):
    "accuracy_multi of answering 'no' for every class of every validation image of the sample the lesson used."
    p = notebooks_fastai_home() / 'samples' / 'pascal_2007'
    df = pd.read_csv(p / 'train.csv')
    n_labels = df[df.is_valid].labels.str.split(' ').map(len)
    return 1 - n_labels.sum() / (len(n_labels) * 20)


def _centre(pose_file: str, cal) -> np.ndarray:
    "The lesson's `get_ctr`, in fastai's -1..1 point coordinates of a 640x480 frame."
    ctr = np.genfromtxt(pose_file, skip_header=3)
    px = np.array([ctr[0] * cal[0][0] / ctr[2] + cal[0][2], ctr[1] * cal[1][1] / ctr[2] + cal[1][2]])
    return px / np.array([320, 240]) - 1


@pytest.fixture(scope='module')
def mean_point_mse(run):
    "Valid MSE of always predicting the mean training head position (person 13 is the validation set)."
    p = notebooks_fastai_home() / 'samples' / 'biwi_head_pose'
    cal = np.genfromtxt(p / '01' / 'rgb.cal', skip_footer=6)
    pts = {f: _centre(str(f)[:-7] + 'pose.txt', cal) for f in p.glob('*/*_rgb.jpg')}
    train = np.stack([v for f, v in pts.items() if f.parent.name != '13'])
    valid = np.stack([v for f, v in pts.items() if f.parent.name == '13'])
    return float(((valid - train.mean(0)) ** 2).mean())


def test_reports_on_sample_data(run):
    rows = [r for r in run.results if r['lesson'] == '06_multicat']
    assert {r['metric'] for r in rows} == {m for lesson, m in BOOK if lesson == '06_multicat'}
    assert all(r['data'] == 'sample' for r in rows)


def test_multilabel_beats_saying_no_to_everything(run, no_label_accuracy):
    assert 0.85 < no_label_accuracy < 0.95  # about two labels out of 20 per image
    acc = run.metric('accuracy_multi')
    assert acc > no_label_accuracy + 0.02, f'accuracy_multi {acc:.4f} vs {no_label_accuracy:.4f} for always "no"'


def test_point_regressor_beats_the_mean_point(run, mean_point_mse):
    mse = run.metric('biwi_valid_mse')
    assert mse < 0.5 * mean_point_mse, f'valid MSE {mse:.4f} vs {mean_point_mse:.4f} for the mean training point'
