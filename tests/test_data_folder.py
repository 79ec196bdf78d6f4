"""Real data sets in fastai's cache that are incomplete or damaged, and the notice before a sample is built."""
from __future__ import annotations

import shutil

import pytest
from fastai.data.external import URLs

from course_utils import core, data
from course_utils.data import REAL_LAYOUTS, DataFolderError, check_real_data, course_data, real_path, sample_path
from course_utils.samples import (SAMPLE_BUILDERS, build_adult_sample, build_biwi_head_pose, build_camvid_tiny,
                                  build_imdb_sample, build_ml_100k, build_mnist_sample, build_movie_lens_sample,
                                  build_pascal_2007, build_pets)

SMALL = {  # each checked layout's sample builder, made small: these stand in for the real data sets
    'oxford-iiit-pet': lambda d: build_pets(d, n_per_breed=1),
    'mnist_sample': build_mnist_sample,
    'pascal_2007': lambda d: build_pascal_2007(d, n_images=16),
    'biwi_head_pose': lambda d: build_biwi_head_pose(d, frames_per_folder=1),
    'ml-100k': lambda d: build_ml_100k(d, n_users=20, n_movies=30, n_ratings=200),
    'camvid_tiny': lambda d: build_camvid_tiny(d, n_images=4),
    'imdb_sample': lambda d: build_imdb_sample(d, n_texts=20),
    'adult_sample': lambda d: build_adult_sample(d, n_rows=20),
    'movie_lens_sample': lambda d: build_movie_lens_sample(d, n_users=20, n_movies=30, n_ratings=200),
}


def test_every_checked_layout_has_a_sample_builder():
    assert set(REAL_LAYOUTS) <= set(SAMPLE_BUILDERS) and set(SMALL) == set(REAL_LAYOUTS)


@pytest.mark.parametrize('name', sorted(REAL_LAYOUTS))
def test_samples_pass_the_check_for_real_data(tmp_path, name):
    "The samples imitate the real layouts, so a folder built like one is what the check calls complete."
    folder = SMALL[name](tmp_path / name)
    assert check_real_data(name, folder) == folder


MNIST = 'http://127.0.0.1:9/mnist_sample.tgz'  # nothing listens on the discard port: the network cannot help


def damage(folder, how: str):
    "Break the MNIST folder `folder` in one of the ways a copy that was cut short or a full disk would."
    first = sorted((folder / 'train' / '3').iterdir())[0]
    if how == 'missing file': (folder / 'labels.csv').unlink()
    elif how == 'missing images': shutil.rmtree(folder / 'valid' / '7')
    elif how == 'truncated image': first.write_bytes(first.read_bytes()[:60])
    elif how == 'not an image': first.write_bytes(b'<!DOCTYPE html><html><body>502 Bad Gateway</body></html>')
    elif how == 'empty image': sorted((folder / 'valid' / '3').iterdir())[len(list((folder / 'valid' / '3').iterdir())) // 2].write_bytes(b'')
    return first


@pytest.mark.parametrize('how, says', [('missing file', 'labels.csv is missing'), ('missing images', 'valid/7/ holds no images'),
                                       ('truncated image', 'cannot be read'), ('not an image', 'cannot be read (UnidentifiedImageError)'),
                                       ('empty image', 'is empty')])
def test_damaged_real_data_stops_with_a_clear_message(fastai_home, monkeypatch, how, says):
    "Instead of an `UnidentifiedImageError` deep in training: the folder, what is wrong, and the two ways out."
    monkeypatch.setenv('COURSE_OFFLINE', '1')
    real = build_mnist_sample(real_path(MNIST))  # stands in for the real data set, extracted earlier
    assert course_data(MNIST) == real
    core._data_kinds.clear()
    damage(real, how)
    with pytest.raises(DataFolderError) as e:
        course_data(MNIST)
    msg = str(e.value)
    assert f'The mnist_sample data set in {real} is incomplete or damaged' in msg and says in msg, msg
    assert f"rm -r '{real}'" in msg and 'COURSE_SAMPLE=1' in msg
    assert 'mnist_sample' not in core._data_kinds  # nothing was used
    # Both ways out work: the sample when asked for, and, once the folder is gone, whatever course_data finds next.
    monkeypatch.setenv('COURSE_SAMPLE', '1')
    assert course_data(MNIST) == sample_path(MNIST)
    monkeypatch.delenv('COURSE_SAMPLE')
    shutil.rmtree(real)
    assert course_data(MNIST) == sample_path(MNIST)  # offline: the sample; online it would download afresh


def test_sample_building_is_announced_before_it_starts(fastai_home, monkeypatch, capsys):
    "The notice comes before the seconds of building, not after them."
    printed_first = []
    build = SAMPLE_BUILDERS['mnist_sample']
    def builder(dest):
        printed_first.append(capsys.readouterr().out)
        return build(dest)
    monkeypatch.setitem(data.SAMPLE_BUILDERS, 'mnist_sample', builder)
    monkeypatch.setenv('COURSE_SAMPLE', '1')
    course_data(MNIST)
    assert printed_first == ['Building the offline sample of mnist_sample (a few seconds)...\n']
    assert 'Using the offline sample of mnist_sample' in capsys.readouterr().out
    course_data(MNIST)  # built already: no notice of building
    assert 'Building' not in capsys.readouterr().out and len(printed_first) == 1


def test_demo_model_prints_a_line_per_epoch(fastai_home, monkeypatch, capsys, tmp_path):
    "`course make-model` shows its epochs instead of training in silence."
    from course_utils.export import train_demo_model
    monkeypatch.setenv('COURSE_SAMPLE', '1')
    monkeypatch.setenv('COURSE_OFFLINE', '1')
    train_demo_model('bears', tmp_path / 'bears', size=32, epochs=2)
    out = capsys.readouterr().out
    assert 'Training a bears model on ' in out and 'resnet18 from random weights, 2 epochs...' in out, out
    lines = [l for l in out.splitlines() if l.startswith('epoch ')]
    assert [l.split(':')[0] for l in lines] == ['epoch 1/2', 'epoch 2/2'], out
    assert all(' · valid_loss ' in l and ' · accuracy ' in l for l in lines), out
    assert out.index('epoch 2/2') < out.index('Saved a bears model')


def test_demo_bear_model_uses_lesson_2s_photos_when_they_are_there(fastai_home, monkeypatch, tmp_path):
    "Offline, with the photos lesson 2's search left in fastai's data folder, the demo model trains on them and says so."
    from course_utils.export import train_demo_model
    from course_utils.predict import read_manifest
    from course_utils.data import BEARS
    monkeypatch.setenv('COURSE_OFFLINE', '1')
    shutil.copytree(SAMPLE_BUILDERS['bears'](tmp_path / 'drawn'), real_path(BEARS))  # stand-ins for the downloaded photos
    training = read_manifest(train_demo_model('bears', tmp_path / 'bears', size=32, epochs=1))['training']
    assert training['data'] == 'real' and training['dataset'] == 'bears', training


def test_a_sample_built_by_another_process_meanwhile_is_kept(fastai_home, monkeypatch):
    "Each process of distributed training builds the samples it needs: the first to finish wins, nothing is replaced."
    monkeypatch.setenv('COURSE_SAMPLE', '1')
    build = SAMPLE_BUILDERS['mnist_sample']
    def builder(dest):
        other = sample_path(MNIST)  # another process finishes its build while this one is still drawing
        build(other)
        (other / '.complete').write_text(str(data.SAMPLES_VERSION))
        (other / 'built-by-the-other-process').touch()
        return build(dest)
    monkeypatch.setitem(data.SAMPLE_BUILDERS, 'mnist_sample', builder)
    path = course_data(MNIST)
    assert path == sample_path(MNIST) and (path / 'built-by-the-other-process').exists()
    assert [p.name for p in path.parent.iterdir()] == ['mnist_sample']  # no half-built copy left behind
