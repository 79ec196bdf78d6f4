"""The data layer's real download path, exercised against a loopback HTTP server."""
import tarfile
from pathlib import Path

import pytest


from course_utils import core
from course_utils.data import DataDownloadError, course_data, real_path, sample_path
from course_utils.samples import build_mnist_sample
from loopback import serve_folder


@pytest.fixture
def server(tmp_path):
    "A static file server on 127.0.0.1 serving `tmp_path/www`."
    www = tmp_path / 'www'
    www.mkdir()
    with serve_folder(www) as url: yield www, url


def make_tgz(src: Path, dest: Path) -> Path:
    with tarfile.open(dest, 'w:gz') as tar: tar.add(src, arcname=src.name)
    return dest


def test_download_and_extract_through_fastai(fastai_home, server, tmp_path):
    www, base = server
    make_tgz(build_mnist_sample(tmp_path / 'src' / 'mnist_sample'), www / 'mnist_sample.tgz')
    url = f'{base}/mnist_sample.tgz'
    path = course_data(url)
    assert path == real_path(url) == fastai_home / 'data' / 'mnist_sample'
    assert (path / 'labels.csv').exists() and len(list((path / 'train' / '3').glob('*.png'))) > 100
    assert (fastai_home / 'archive' / 'mnist_sample.tgz').exists()  # fastai's archive cache
    assert core._data_kinds['mnist_sample'] == 'real'
    assert not sample_path(url).exists()


def test_cached_real_data_needs_no_network(fastai_home, server, tmp_path):
    www, base = server
    make_tgz(build_mnist_sample(tmp_path / 'src' / 'mnist_sample'), www / 'mnist_sample.tgz')
    url = f'{base}/mnist_sample.tgz'
    first = course_data(url)
    (www / 'mnist_sample.tgz').unlink()  # the server has nothing left to give
    assert course_data(url) == first


@pytest.mark.parametrize('damage', ['truncated', 'garbage'])
def test_broken_archive_gives_clear_error_and_leaves_nothing(fastai_home, server, tmp_path, damage):
    www, base = server
    good = make_tgz(build_mnist_sample(tmp_path / 'src' / 'mnist_sample'), tmp_path / 'good.tgz').read_bytes()
    bad = good[:len(good) // 2] if damage == 'truncated' else b'this is not an archive' * 100
    (www / 'mnist_sample.tgz').write_bytes(bad)
    url = f'{base}/mnist_sample.tgz'
    with pytest.raises(DataDownloadError, match='corrupt or truncated'):
        course_data(url)
    assert not real_path(url).exists(), 'half-extracted data left behind'
    assert not (fastai_home / 'archive' / 'mnist_sample.tgz').exists(), 'broken archive kept'
    # Once the server has a good copy, the same call works.
    (www / 'mnist_sample.tgz').write_bytes(good)
    assert (course_data(url) / 'labels.csv').exists()


def test_missing_file_on_server_is_a_clear_error(fastai_home, server):
    _, base = server
    with pytest.raises(DataDownloadError, match='Could not download'):
        course_data(f'{base}/mnist_sample.tgz')


def test_no_server_falls_back_to_sample(fastai_home, capsys):
    url = 'http://127.0.0.1:9/mnist_sample.tgz'  # discard port: nothing listens
    path = course_data(url)
    assert path == sample_path(url) and (path / 'labels.csv').exists()
    assert 'Using the offline sample of mnist_sample' in capsys.readouterr().out
    assert core._data_kinds['mnist_sample'] == 'sample'


def test_real_pets_in_cache_used_offline(fastai_home, monkeypatch):
    "With the real data set extracted in fastai's cache, lessons use it and never build a sample."
    from fastai.data.external import URLs
    from course_utils.samples import build_pets
    build_pets(real_path(URLs.PETS), n_per_breed=1)  # stands in for the real download: same layout
    monkeypatch.setenv('COURSE_OFFLINE', '1')
    assert course_data(URLs.PETS) == fastai_home / 'data' / 'oxford-iiit-pet'
    assert core._data_kinds['oxford-iiit-pet'] == 'real' and not core.using_sample_data()
    assert not sample_path(URLs.PETS).exists()


def test_samples_built_by_older_builders_are_built_again(fastai_home, monkeypatch):
    "A sample is built once; when the builders change (SAMPLES_VERSION), a cached sample is replaced."
    from course_utils import data
    monkeypatch.setenv('COURSE_SAMPLE', '1')
    url = 'http://127.0.0.1:9/mnist_sample.tgz'
    path = course_data(url)
    marker = path / 'left-by-an-older-builder'
    marker.touch()
    assert course_data(url) == path and marker.exists()          # same version: reused as it is
    monkeypatch.setattr(data, 'SAMPLES_VERSION', data.SAMPLES_VERSION + 1)
    assert course_data(url) == path and not marker.exists()      # newer builders: built again
    assert (path / 'labels.csv').exists() and (path / '.complete').read_text() == str(data.SAMPLES_VERSION)
