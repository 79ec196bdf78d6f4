"""The image search of lesson 2 (course_utils.search): no network, no real waiting.

Most tests run ddgs's own code with only its HTTP client faked: `FakeClient` takes the place of
`primp.Client`, which ddgs's `HttpClient` sends every request through, and `FakeService` behind it
answers the way DuckDuckGo and Bing do (a page holding the `vqd` token, `i.js` JSON, Bing's HTML), or refuses
with a status code or a time-out. So when a new ddgs changes how it reports a refusal, these
tests fail here, instead of a lesson quietly training on fewer pictures.
"""
import io
import json
import shutil
from urllib.parse import quote, urlsplit

import primp
import pytest
from ddgs.http_client import HttpClient
from fastai.data.external import fastai_cfg
from fastai.vision.utils import get_image_files, verify_images
from PIL import Image

from course_utils import core
from course_utils import search as search_mod
from course_utils.data import BEARS, course_data, real_path, sample_path
from course_utils.search import ImageSearch, SearchError, SearchReport, ddgs_images, gather_images
from loopback import serve_folder


class FakeClock:
    "A clock that only moves when someone sleeps; records every sleep."
    def __init__(self): self.now, self.sleeps = 0.0, []
    def __call__(self): return self.now
    def sleep(self, s): self.sleeps.append(s); self.now += s


@pytest.fixture
def clock(): return FakeClock()


# The fake search services, at the level of primp, the HTTP client under ddgs

class FakeResponse:
    "What ddgs reads from a primp response: the status code and the body, as bytes and as text."
    def __init__(self, status_code: int, body: str = ''):
        self.status_code, self.text, self.content = status_code, body, body.encode()


# the routes ddgs's image engines ask, by (host, path)
ROUTES = {('duckduckgo.com', ''): 'token', ('duckduckgo.com', '/i.js'): 'ijs', ('www.bing.com', '/images/async'): 'bing'}

REFUSED_PAGE = {  # bodies in the style of what the services send when they turn a robot away
    202: '<!DOCTYPE html><html><body><div class="anomaly-modal__title">Unfortunately, bots use DuckDuckGo too.</div></body></html>',
    403: '<html><head><title>403 Forbidden</title></head><body><h1>403 Forbidden</h1></body></html>',
    418: '',
    429: '<html><body><h1>429 Too Many Requests</h1></body></html>',
}


def token_page(query):
    "DuckDuckGo's result page: a script that hands out the `vqd` token for the query."
    q = quote(query)
    return (f'<!DOCTYPE html><html><head><title>{query} at DuckDuckGo</title></head><body><script>'
            f"DDG.deep.initialize('/d.js?q={q}&l=us-en&s=0&vqd=4-211762189873950843151184425846146&p=1');"
            '</script></body></html>')


def ijs_page(query, urls):
    "DuckDuckGo's `i.js` answer: JSON with one record per picture."
    results = [{'height': 800, 'image': u, 'image_token': f'tok{i}', 'source': 'Bing',
                'thumbnail': f'https://tse1.mm.bing.net/th?id=OIP.{i}', 'thumbnail_token': f'th{i}',
                'title': f'{query} photo {i}', 'url': f'https://pages.example/{i}.html', 'width': 1200}
               for i, u in enumerate(urls)]
    return json.dumps({'ads': None, 'next': f'i.js?q={quote(query)}&o=json&p=1&s=100', 'query': query,
                       'queryEncoded': quote(query), 'response_type': 'images', 'results': results,
                       'vqd': {query: '4-211762189873950843151184425846146'}})


def bing_page(query, urls):
    "Bing's `images/async` answer: HTML with the picture's data in each link's `m` attribute."
    items = ''.join(
        '<div><div class="imgpt"><a class="iusc" href="#" m=\'' + json.dumps(
            {'t': f'{query} photo {i}', 'murl': u, 'turl': f'https://tse2.mm.bing.net/th?id=OIP.b{i}',
             'purl': f'https://pages.example/b{i}.html'}) + '\'>x</a>'
        '<div class="img_info hon"><span class="nowrap">1200 x 800 · jpeg</span></div></div>'
        '<div class="infopt"><div class="lnkw"><a>pages.example</a></div></div></div>'
        for i, u in enumerate(urls))
    return f'<html><body><ul class="dgControl_list">{items}</ul></body></html>'


class FakeService:
    """DuckDuckGo and Bing as ddgs's HTTP client sees them.

    `ddg` and `bing` map a query to the picture URLs each service knows (none: an empty answer);
    `fail(route, query, *faults)` makes the next requests of that route for that query answer with
    those status codes, or raise those exceptions, one per request."""
    def __init__(self, ddg=None, bing=None):
        self.known = {'ijs': ddg or {}, 'bing': bing or {}}
        self.faults, self.requests = {}, []  # requests: (host, route, query)

    def fail(self, route, query, *faults): self.faults[(route, query)] = list(faults)
    def count(self, route, query): return sum(r == route and q == query for _, r, q in self.requests)

    def client(self, **settings): return FakeClient(self)

    def answer(self, method, url, params=None, **kwargs):
        parts = urlsplit(url)
        route, query = ROUTES[(parts.hostname, parts.path)], (params or {})['q']
        self.requests.append((parts.hostname, route, query))
        assert method == 'GET'
        if faults := self.faults.get((route, query)):
            fault = faults.pop(0)
            if isinstance(fault, Exception): raise fault
            return FakeResponse(fault, REFUSED_PAGE[fault])
        if route == 'token': return FakeResponse(200, token_page(query))
        urls = self.known[route].get(query, [])
        return FakeResponse(200, ijs_page(query, urls) if route == 'ijs' else bing_page(query, urls))


class FakeClient:
    "Takes primp.Client's place: the methods of it that ddgs calls."
    def __init__(self, service): self.service = service
    def headers_update(self, headers): pass
    def request(self, method, url, **kwargs): return self.service.answer(method, url, **kwargs)


@pytest.fixture
def service(monkeypatch):
    "Install a `FakeService` under ddgs; the test fills it in."
    svc = FakeService()
    monkeypatch.setattr(primp, 'Client', svc.client)
    assert isinstance(HttpClient().client, FakeClient), 'ddgs no longer sends its requests through primp.Client'
    return svc


def timed_out(url):
    "The exception primp raises when a request times out (its real message)."
    return primp.TimeoutError(f'error sending request for url ({url}) > operation timed out')


def pics(name, n): return [f'https://img.example/{name}/{i}.jpg' for i in range(n)]


def ddgs_search(clock, **kw): return ImageSearch(ddgs_images, clock=clock, sleep=clock.sleep, **kw)


# ddgs's answers, through ImageSearch

def test_normal_answer_gives_the_image_urls(service, clock):
    service.known['ijs'].update({'grizzly bear': pics('g', 5), 'black bear': pics('b', 5)})
    search = ddgs_search(clock, min_interval=2.0)
    report = search(['grizzly bear', 'black bear'], max_results=4)
    assert report.ok
    assert report.urls == {'grizzly bear': pics('g', 4), 'black bear': pics('b', 4)}
    assert clock.sleeps == [2.0]  # the pacing between the two queries, nothing else
    assert service.count('bing', 'grizzly bear') == 0  # DuckDuckGo answered: ddgs does not ask Bing


@pytest.mark.parametrize('status', [202, 403, 418, 429])
@pytest.mark.parametrize('route', ['token', 'ijs'])
def test_refusals_are_retried_with_backoff(service, clock, route, status):
    service.known['ijs']['grizzly bear'] = pics('g', 3)
    service.fail(route, 'grizzly bear', status, status)  # DuckDuckGo refuses twice ...
    service.fail('bing', 'grizzly bear', status, status)  # ... and so does Bing
    assert ddgs_search(clock, retries=3, backoff=5.0).urls('grizzly bear', 10) == pics('g', 3)
    assert service.count('token', 'grizzly bear') == 3
    assert clock.sleeps == [5.0, 10.0]  # doubling back-off


@pytest.mark.parametrize('route', ['token', 'ijs'])
def test_refused_every_time_is_an_error_naming_the_query(service, clock, route):
    service.known['ijs']['black bear'] = pics('b', 3)
    service.fail(route, 'black bear', *[429] * 3)
    service.fail('bing', 'black bear', *[429] * 3)
    with pytest.raises(SearchError) as e: ddgs_search(clock, retries=2, backoff=2.0).urls('black bear', 10)
    message = str(e.value)
    assert "'black bear'" in message and 'after 3 tries' in message
    assert 'wait a few minutes' in message and 'COURSE_SAMPLE=1' in message
    assert service.count('token', 'black bear') == 3 and clock.sleeps == [2.0, 4.0]


def test_refused_query_is_reported_and_the_others_go_on(service, clock):
    service.known['ijs'].update({'grizzly bear': pics('g', 2), 'black bear': pics('b', 2), 'teddy bear': pics('t', 2)})
    service.fail('ijs', 'black bear', *[403] * 4)
    service.fail('bing', 'black bear', *[403] * 4)
    report = ddgs_search(clock, retries=3)(['grizzly bear', 'black bear', 'teddy bear'])
    assert not report.ok
    assert report.urls == {'grizzly bear': pics('g', 2), 'teddy bear': pics('t', 2)}
    assert "'black bear'" in report.errors['black bear'] and 'No results found.' in report.errors['black bear']
    assert "'black bear': FAILED:" in str(report) and 'Traceback' not in str(report)


def test_empty_answer_is_retried_a_few_times_then_named(service, clock):
    # ddgs answers an empty page with the same exception as a refusal, so both are retried alike
    report = ddgs_search(clock, retries=2, backoff=1.0)(['unicorn bear'])
    assert service.count('ijs', 'unicorn bear') == 3 and service.count('bing', 'unicorn bear') == 3
    message = report.errors['unicorn bear']
    assert "'unicorn bear'" in message and 'No results found.' in message and 'after 3 tries' in message


def test_time_out_is_retried(service, clock):
    service.known['ijs']['teddy bear'] = pics('t', 3)
    service.fail('token', 'teddy bear', timed_out('https://duckduckgo.com/?q=teddy+bear'))
    service.fail('bing', 'teddy bear', timed_out('https://www.bing.com/images/async?q=teddy+bear'))
    assert ddgs_search(clock, backoff=5.0).urls('teddy bear', 10) == pics('t', 3)
    assert clock.sleeps == [5.0]


def test_time_out_every_time_is_an_error_naming_the_query(service, clock):
    service.fail('token', 'teddy bear', *[timed_out('https://duckduckgo.com/?q=teddy+bear')] * 2)
    service.fail('bing', 'teddy bear', *[timed_out('https://www.bing.com/images/async?q=teddy+bear')] * 2)
    with pytest.raises(SearchError, match=r"'teddy bear' after 2 tries.*timed out"):
        ddgs_search(clock, retries=1).urls('teddy bear', 10)


def test_bing_answers_when_duckduckgo_refuses(service, clock):
    service.known['bing']['grizzly bear'] = pics('bing', 3)
    service.fail('ijs', 'grizzly bear', 403)
    assert ddgs_search(clock).urls('grizzly bear', 10) == pics('bing', 3)
    assert clock.sleeps == []  # ddgs itself went on to Bing: no retry was needed
    assert [r for _, r, _ in service.requests] == ['token', 'ijs', 'bing']  # DuckDuckGo first, Bing second


def test_connection_refused_fails_at_once(service, clock):
    refused = primp.ConnectError('error sending request for url (https://duckduckgo.com/) > tcp connect error > Connection refused (os error 111)')
    service.fail('token', 'x', refused)
    service.fail('bing', 'x', 403)
    with pytest.raises(SearchError, match=r"the search for 'x' failed \(DDGSException: ConnectError"):
        ddgs_search(clock).urls('x', 10)
    assert clock.sleeps == []


def test_probe_checks_the_hosts_ddgs_asks(service, clock):
    service.known['bing']['q'] = pics('bing', 1)
    service.fail('ijs', 'q', 403)  # so that both engines are asked
    ddgs_search(clock).urls('q', 10)
    assert set(search_mod.search_hosts()) == {host for host, _, _ in service.requests} == {'duckduckgo.com', 'www.bing.com'}
    assert search_mod.search_hosts('bing') == ['www.bing.com']


# ImageSearch with a fake backend: the parts that do not depend on ddgs

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


def test_backend_that_finds_nothing_is_an_error_at_once(clock):
    backend = FakeBackend(clock, {'grizzly bear': results('g', 3), 'unicorn bear': []})
    report = make_search(clock, backend)(['grizzly bear', 'unicorn bear'])
    assert not report.ok and len(backend.calls) == 2  # an empty list is an answer: nothing to retry
    assert report.errors['unicorn bear'] == "no images found for 'unicorn bear': try other words"


def test_other_errors_fail_at_once_with_their_reason(clock):
    backend = FakeBackend(clock, {'x': []}, fail_first={'x': (ValueError('bad term'), 99)})
    report = make_search(clock, backend)(['x'])
    assert len(backend.calls) == 1 and clock.sleeps == []
    assert report.errors['x'] == "the search for 'x' failed (ValueError: bad term)"


# gather_images: when to search, the downloads, and never fewer labels than asked

@pytest.fixture(scope='module')
def built_bears(tmp_path_factory):
    "The bears sample, built once for this module (building it takes a few seconds)."
    home = tmp_path_factory.mktemp('bears_home')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('FASTAI_HOME', str(home))
        mp.setenv('COURSE_SAMPLE', '1')
        fastai_cfg.cache_clear()
        try: yield course_data(BEARS)
        finally: fastai_cfg.cache_clear()


@pytest.fixture
def bears_home(fastai_home, built_bears):
    "A private FASTAI_HOME (see `fastai_home`) that already holds the bears sample, as a fallback finds it."
    shutil.copytree(built_bears, sample_path(BEARS))
    return fastai_home


def no_search():
    def backend(term, max_results): raise AssertionError(f'searched for {term!r} although it should not')
    return ImageSearch(backend, sleep=lambda s: None)


QUERIES = {'grizzly': 'grizzly bear', 'black': 'black bear'}


@pytest.fixture
def probe(monkeypatch):
    "The hosts the reachability probe asked; every host answers unless the test says otherwise."
    asked, answering = [], set(search_mod.search_hosts())
    def online(host, port=443): asked.append(host); return host in answering
    monkeypatch.setattr(search_mod, 'online', online)
    return asked, answering


@pytest.mark.parametrize('env, why', [({'COURSE_SAMPLE': '1'}, 'COURSE_SAMPLE=1'), ({'COURSE_OFFLINE': '1'}, 'COURSE_OFFLINE=1')])
def test_no_search_without_network_or_with_samples(bears_home, tmp_path, monkeypatch, capsys, env, why):
    for k, v in env.items(): monkeypatch.setenv(k, v)
    path = gather_images(tmp_path / 'bears', QUERIES, fallback=BEARS, search=no_search())
    assert path == sample_path(BEARS)
    assert sorted(get_image_files(path).map(lambda p: p.parent.name).unique()) == ['black', 'grizzly', 'teddy']
    out = capsys.readouterr().out
    assert f'Not searching the web ({why}): using the bears data set instead.' in out
    assert core._data_kinds['bears'] == 'sample'
    assert not (tmp_path / 'bears').exists()


def test_no_search_when_no_search_host_answers(bears_home, tmp_path, probe, capsys):
    asked, answering = probe
    answering.clear()
    path = gather_images(tmp_path / 'bears', QUERIES, fallback=BEARS, search=no_search())
    assert path == sample_path(BEARS)
    assert sorted(asked) == ['duckduckgo.com', 'www.bing.com']
    assert 'none of duckduckgo.com, www.bing.com answers' in capsys.readouterr().out


def test_no_fallback_is_a_clear_error(fastai_home, tmp_path, monkeypatch):
    monkeypatch.setenv('COURSE_OFFLINE', '1')
    with pytest.raises(SearchError, match='no fallback data set'):
        gather_images(tmp_path / 'mine', {'a': 'a'}, search=no_search())


def jpeg_bytes(colour):
    buf = io.BytesIO()
    Image.new('RGB', (40, 30), colour).save(buf, 'JPEG')
    return buf.getvalue()


@pytest.fixture
def image_server(tmp_path):
    "A loopback HTTP server with a few JPEGs under /img/<name>/."
    www = tmp_path / 'www'
    for name in ('grizzly', 'black'):
        (www / 'img' / name).mkdir(parents=True)
        for i in range(4): (www / 'img' / name / f'{i}.jpg').write_bytes(jpeg_bytes((60 * i, 80, 40)))
    with serve_folder(www) as url: yield f'{url}/img'


def served(image_server, name, n=3):
    "URLs of `n` pictures the loopback server has for `name`, and one it does not have."
    return [f'{image_server}/{name}/{i}.jpg' for i in range(n)] + [f'{image_server}/{name}/missing.jpg']


def test_search_and_download_into_label_folders(fastai_home, tmp_path, probe, service, capsys, clock, image_server):
    service.known['ijs'].update({q: served(image_server, label) for label, q in QUERIES.items()})
    dest = tmp_path / 'bears'
    path = gather_images(dest, QUERIES, fallback=BEARS, search=ddgs_search(clock))
    assert path == dest
    got = get_image_files(dest)
    assert sorted(p.parent.name for p in got) == ['black'] * 3 + ['grizzly'] * 3
    assert not verify_images(got)
    out = capsys.readouterr().out
    assert "'grizzly bear': 4 image URLs, 3 downloaded" in out and "'black bear': 4 image URLs, 3 downloaded" in out
    assert core._data_kinds['bears'] == 'real'
    # A second run uses what is there and does not search again.
    assert gather_images(dest, QUERIES, fallback=BEARS, search=no_search()) == dest
    assert 'already holds images for every label' in capsys.readouterr().out


def test_downloads_show_a_progress_bar_per_label(fastai_home, tmp_path, probe, service, monkeypatch, clock, image_server):
    bars = []
    def recording_bar(*args, **kwargs):
        bars.append(bar := real_bar(*args, **kwargs))
        return bar
    real_bar = search_mod.progress_bar
    monkeypatch.setattr(search_mod, 'progress_bar', recording_bar)
    service.known['ijs'].update({q: served(image_server, label) for label, q in QUERIES.items()})
    gather_images(tmp_path / 'bears', QUERIES, search=ddgs_search(clock))
    assert [(b.total, b.comment) for b in bars] == [(4, 'grizzly: 3 files'), (4, 'black: 3 files')]


def test_a_label_without_pictures_stops_everything(fastai_home, tmp_path, probe, service, capsys, clock, image_server):
    service.known['ijs'].update({q: served(image_server, label) for label, q in QUERIES.items()})
    service.fail('ijs', 'black bear', *[429] * 4)  # refused on every try of the first run
    service.fail('bing', 'black bear', *[429] * 4)
    dest = tmp_path / 'bears'
    with pytest.raises(SearchError) as e: gather_images(dest, QUERIES, fallback=BEARS, search=ddgs_search(clock, retries=3))
    message = str(e.value)
    assert "no pictures for 'black'" in message and "'black bear'" in message and 'No results found.' in message
    assert 'run the cell again' in message and 'COURSE_SAMPLE=1' in message
    assert len(get_image_files(dest / 'grizzly')) == 3  # kept for the next run
    assert "'black bear': FAILED:" in capsys.readouterr().out
    assert 'bears' not in core._data_kinds
    # The next run searches only for the missing label.
    assert gather_images(dest, QUERIES, fallback=BEARS, search=ddgs_search(clock)) == dest
    assert service.count('token', 'grizzly bear') == 1 and service.count('token', 'black bear') == 5
    assert len(get_image_files(dest / 'black')) == 3
    assert 'searching again for: black' in capsys.readouterr().out


def test_a_label_whose_downloads_all_fail_stops_everything(fastai_home, tmp_path, probe, clock, image_server):
    backend = FakeBackend(clock, {'grizzly bear': [{'image': u} for u in served(image_server, 'grizzly')],
                                  'black bear': [{'image': f'{image_server}/black/gone{i}.jpg'} for i in range(3)]})
    with pytest.raises(SearchError, match=r"no pictures for 'black' \('black bear': 3 image URLs, 0 downloaded\)"):
        gather_images(tmp_path / 'bears', QUERIES, fallback=BEARS, search=make_search(clock, backend))


def test_search_with_no_pictures_at_all_falls_back_loudly(bears_home, tmp_path, probe, service, capsys, clock):
    for q in QUERIES.values():
        service.fail('ijs', q, *[418] * 2)
        service.fail('bing', q, *[418] * 2)
    path = gather_images(tmp_path / 'bears', QUERIES, fallback=BEARS, search=ddgs_search(clock, retries=1))
    assert path == sample_path(BEARS)
    out = capsys.readouterr().out
    assert out.count('FAILED') == 2
    assert 'WARNING: the search gave no pictures for any label' in out and 'using the bears data set instead' in out
    assert core._data_kinds['bears'] == 'sample'


def test_downloads_that_all_fail_fall_back_to_the_sample_not_to_empty_folders(bears_home, tmp_path, probe, capsys, clock, image_server):
    # the lesson's call: `dest` is where `course_data` looks for the real bears first
    backend = FakeBackend(clock, {q: [{'image': f'{image_server}/{label}/gone.jpg'}] for label, q in QUERIES.items()})
    path = gather_images(real_path(BEARS), QUERIES, fallback=BEARS, search=make_search(clock, backend))
    assert path == sample_path(BEARS) and len(get_image_files(path)) > 0
    assert "'grizzly bear': 1 image URLs, 0 downloaded" in capsys.readouterr().out
    assert core._data_kinds['bears'] == 'sample'


def test_search_with_no_pictures_and_no_fallback_is_an_error(fastai_home, tmp_path, probe, service, clock):
    with pytest.raises(SearchError, match='no fallback data set'):
        gather_images(tmp_path / 'bears', QUERIES, search=ddgs_search(clock, retries=0))
