"""The image search of lesson 2 (course_utils.search), with fake backends: no network, no real waiting."""
import functools
import http.server
import io
import threading

import pytest
from ddgs.exceptions import DDGSException, RatelimitException
from fastai.vision.utils import get_image_files, verify_images
from PIL import Image

from course_utils import core
from course_utils import search as search_mod
from course_utils.data import BEARS, sample_path
from course_utils.search import ImageSearch, SearchReport, ddgs_images, gather_images


class FakeClock:
    "A clock that only moves when someone sleeps; records every sleep."
    def __init__(self): self.now, self.sleeps = 0.0, []
    def __call__(self): return self.now
    def sleep(self, s): self.sleeps.append(s); self.now += s


class FakeBackend:
    "Answers from a table: a list of results, or an exception to raise on each of the first n calls."
    def __init__(self, clock, answers, fail_first=None):
        self.clock, self.answers, self.fail_first, self.calls = clock, answers, fail_first or {}, []

    def __call__(self, term, max_results):
        self.calls.append((term, self.clock.now))
        n_calls = sum(t == term for t, _ in self.calls)
        exc, times = self.fail_first.get(term, (None, 0))
        if exc is not None and n_calls <= times: raise exc
        return self.answers[term][:max_results]


def results(term, n): return [{'title': f'{term} {i}', 'image': f'https://img.example/{term}/{i}.jpg'} for i in range(n)]


@pytest.fixture
def clock(): return FakeClock()


def make_search(clock, backend, **kw): return ImageSearch(backend, clock=clock, sleep=clock.sleep, **kw)


def test_urls_for_each_term_in_order_and_paced(clock):
    backend = FakeBackend(clock, {'grizzly bear': results('g', 5), 'black bear': results('b', 5), 'teddy bear': results('t', 5)})
    report = make_search(clock, backend, min_interval=2.0)(['grizzly bear', 'black bear', 'teddy bear'], max_results=4)
    assert report.ok and isinstance(report, SearchReport)
    assert report.urls['black bear'] == [f'https://img.example/b/{i}.jpg' for i in range(4)]
    assert [t for t, _ in backend.calls] == ['grizzly bear', 'black bear', 'teddy bear']
    times = [t for _, t in backend.calls]
    assert all(b - a >= 2.0 for a, b in zip(times, times[1:])), times
    assert clock.sleeps == [2.0, 2.0]  # only the pacing, and only between requests


def test_duplicates_and_results_without_url_are_dropped(clock):
    answer = [{'image': 'https://a/1.jpg'}, {'title': 'no image'}, {'image': ''}, {'image': 'https://a/1.jpg'}, {'image': 'https://a/2.jpg'}]
    report = make_search(clock, FakeBackend(clock, {'q': answer}))(['q'])
    assert report.urls['q'] == ['https://a/1.jpg', 'https://a/2.jpg']


def test_empty_results_are_a_result_not_an_error(clock):
    backend = FakeBackend(clock, {'grizzly bear': results('g', 3), 'unicorn bear': []})
    report = make_search(clock, backend)(['grizzly bear', 'unicorn bear'])
    assert report.ok
    assert report.urls['unicorn bear'] == []
    assert "'unicorn bear': 0 image URLs (no results)" in str(report)


def test_rate_limited_then_success_after_backoff(clock):
    backend = FakeBackend(clock, {'teddy bear': results('t', 3)},
                          fail_first={'teddy bear': (RatelimitException('429 Too Many Requests'), 2)})
    report = make_search(clock, backend, min_interval=1.0, backoff=5.0, retries=3)(['teddy bear'])
    assert report.ok and len(report.urls['teddy bear']) == 3
    assert len(backend.calls) == 3
    assert clock.sleeps == [5.0, 10.0]  # doubling back-off; each covers the pacing interval


def test_ddgs_style_blocked_request_is_retried(clock):
    blocked = DDGSException("_extract_vqd() keywords='black bear' Could not extract vqd.")
    backend = FakeBackend(clock, {'black bear': results('b', 2)}, fail_first={'black bear': (blocked, 1)})
    report = make_search(clock, backend)(['black bear'])
    assert report.ok and len(backend.calls) == 2


def test_term_that_keeps_failing_is_reported_and_others_go_on(clock):
    backend = FakeBackend(clock, {'grizzly bear': results('g', 2), 'black bear': results('b', 2), 'teddy bear': results('t', 2)},
                          fail_first={'black bear': (RatelimitException('202 Ratelimit'), 99)})
    report = make_search(clock, backend, retries=2, backoff=1.0)(['grizzly bear', 'black bear', 'teddy bear'])
    assert not report.ok
    assert set(report.urls) == {'grizzly bear', 'teddy bear'}
    assert sum(t == 'black bear' for t, _ in backend.calls) == 3  # one try and two retries
    message = report.errors['black bear']
    assert 'still refusing after 3 tries' in message and '202 Ratelimit' in message and 'wait a few minutes' in message
    assert "'black bear': FAILED:" in str(report) and 'Traceback' not in str(report)


def test_other_errors_fail_at_once_with_their_reason(clock):
    backend = FakeBackend(clock, {'x': []}, fail_first={'x': (ConnectionError('connection reset by peer'), 99)})
    report = make_search(clock, backend)(['x'])
    assert len(backend.calls) == 1 and clock.sleeps == []
    assert report.errors['x'] == 'the search failed (ConnectionError: connection reset by peer)'


def test_ddgs_adapter_asks_for_images_and_turns_no_results_into_empty(monkeypatch):
    import ddgs
    asked = []
    class FakeDDGS:
        def images(self, query, max_results):
            asked.append((query, max_results))
            if query == 'nothing': raise DDGSException('No results found.')
            if query == 'blocked': raise RatelimitException('429')
            return results(query, max_results)
    monkeypatch.setattr(ddgs, 'DDGS', FakeDDGS)
    assert len(ddgs_images('grizzly bear', 7)) == 7
    assert ddgs_images('nothing', 5) == []
    with pytest.raises(RatelimitException): ddgs_images('blocked', 5)
    assert asked[0] == ('grizzly bear', 7)


# gather_images: when to search, and the fallback to the sample

def no_search(clock=None):
    def backend(term, max_results): raise AssertionError(f'searched for {term!r} although it should not')
    return ImageSearch(backend, sleep=lambda s: None)


QUERIES = {'grizzly': 'grizzly bear', 'black': 'black bear'}


@pytest.mark.parametrize('env, why', [({'COURSE_SAMPLE': '1'}, 'COURSE_SAMPLE=1'), ({'COURSE_OFFLINE': '1'}, 'COURSE_OFFLINE=1')])
def test_no_search_without_network_or_with_samples(fastai_home, tmp_path, monkeypatch, capsys, env, why):
    for k, v in env.items(): monkeypatch.setenv(k, v)
    path = gather_images(tmp_path / 'bears', QUERIES, fallback=BEARS, search=no_search())
    assert path == sample_path(BEARS)
    assert sorted(get_image_files(path).map(lambda p: p.parent.name).unique()) == ['black', 'grizzly', 'teddy']
    out = capsys.readouterr().out
    assert f'Not searching the web ({why}): using the bears data set instead.' in out
    assert core._data_kinds['bears'] == 'sample'
    assert not (tmp_path / 'bears').exists()


def test_no_search_when_service_does_not_answer(fastai_home, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(search_mod, 'online', lambda host, port: False)
    path = gather_images(tmp_path / 'bears', QUERIES, fallback=BEARS, search=no_search())
    assert path == sample_path(BEARS)
    assert 'duckduckgo.com does not answer' in capsys.readouterr().out


def test_no_fallback_is_a_clear_error(fastai_home, tmp_path, monkeypatch):
    monkeypatch.setenv('COURSE_OFFLINE', '1')
    with pytest.raises(search_mod.SearchError, match='no fallback data set'):
        gather_images(tmp_path / 'mine', {'a': 'a'}, search=no_search())


def jpeg_bytes(colour):
    buf = io.BytesIO()
    Image.new('RGB', (40, 30), colour).save(buf, 'JPEG')
    return buf.getvalue()


@pytest.fixture
def image_server(tmp_path):
    "A loopback HTTP server with a few JPEGs under /img/."
    www = tmp_path / 'www'
    (www / 'img').mkdir(parents=True)
    for i in range(4): (www / 'img' / f'{i}.jpg').write_bytes(jpeg_bytes((60 * i, 80, 40)))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try: yield f'http://127.0.0.1:{httpd.server_address[1]}/img'
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_online_search_downloads_into_label_folders(fastai_home, tmp_path, monkeypatch, capsys, clock, image_server):
    monkeypatch.setattr(search_mod, 'online', lambda host, port: True)
    backend = FakeBackend(clock, {'grizzly bear': [{'image': f'{image_server}/{i}.jpg'} for i in range(3)] + [{'image': f'{image_server}/missing.jpg'}],
                                  'black bear': []},
                          fail_first={'black bear': (ConnectionError('refused'), 99)})
    dest = tmp_path / 'bears'
    path = gather_images(dest, QUERIES, fallback=BEARS, search=make_search(clock, backend))
    assert path == dest
    got = get_image_files(dest)
    assert len(got) == 3 and {p.parent.name for p in got} == {'grizzly'}
    assert not verify_images(got)
    assert not (dest / 'black').exists()  # its search failed: no empty label folder
    out = capsys.readouterr().out
    assert "'grizzly bear': 4 image URLs" in out and "'black bear': FAILED: the search failed (ConnectionError: refused)" in out
    assert core._data_kinds['bears'] == 'real'
    # A second run uses what is there and does not search again.
    assert gather_images(dest, QUERIES, fallback=BEARS, search=no_search()) == dest
    assert 'already holds 3 images' in capsys.readouterr().out


def test_search_with_no_images_falls_back(fastai_home, tmp_path, monkeypatch, capsys, clock):
    monkeypatch.setattr(search_mod, 'online', lambda host, port: True)
    backend = FakeBackend(clock, {}, fail_first={q: (RatelimitException('429'), 99) for q in QUERIES.values()})
    path = gather_images(tmp_path / 'bears', QUERIES, fallback=BEARS, search=make_search(clock, backend, retries=1))
    assert path == sample_path(BEARS)
    out = capsys.readouterr().out
    assert out.count('FAILED') == 2 and 'The search gave no images: using the bears data set instead.' in out
