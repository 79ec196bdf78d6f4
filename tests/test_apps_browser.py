"""The bear classifier served by Voila, driven by a real browser (headless Debian chromium + Playwright).

A demo model is trained once on the bears sample; voila serves nbs/apps/bear_classifier.ipynb (with the
apps' voila.py) on a free loopback port and is always stopped. One page takes many uploads: the good
photo, then every awkward or hostile file, a phone photo and a HEIC one, each followed by a good photo that
must still classify. Servers of copies of the model whose manifests tell other training stories check the
page's notice on how far to trust the answers.
Screenshots go to artifacts/screenshots/; a good one becomes images/app_bear_classifier.png (the README's) when that
is missing or COURSE_UPDATE_SCREENSHOTS=1.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from app_inputs import Upload, make_inputs, upright_reference
from browser import CHROMIUM, NOT_LOOPBACK, launch_options
from demo_model import demo_models_dir, sample_bear_photo
from notebook_runner import ARTIFACTS, ROOT
from optional import require
from course_utils.app import PHOTO_MAX_SIDE
from course_utils.cli import app_server
from course_utils.predict import load_image

HAVE_BROWSER = Path(CHROMIUM).exists() and importlib.util.find_spec('playwright') is not None
pytestmark = require(HAVE_BROWSER, f'a browser for the app tests (Chromium at {CHROMIUM} and Playwright)')
if HAVE_BROWSER: from playwright.sync_api import Page, expect, sync_playwright

APPS = ROOT / 'nbs' / 'apps'
SHOTS = ARTIFACTS / 'screenshots'
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never send 127.0.0.1 to a proxy
TOL = 1e-4
TIMINGS: dict[str, list[float]] = {}


def record(name: str, seconds: float):
    TIMINGS.setdefault(name, []).append(round(seconds, 3))


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope='module', autouse=True)
def timings_report():
    yield
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / 'timings.json').write_text(json.dumps(TIMINGS, indent=1))
    print('\nbrowser test timings (s):', json.dumps(TIMINGS))


@pytest.fixture(scope='module')
def models():
    t0 = time.perf_counter()
    d = demo_models_dir()
    record('train_and_export_demo_model', time.perf_counter() - t0)
    return d


@pytest.fixture(scope='module')
def predictor(models):
    from course_utils.predict import load_predictor
    return load_predictor(models / 'bears')


@pytest.fixture(scope='module')
def inputs(tmp_path_factory, models) -> dict[str, Upload]:
    return make_inputs(tmp_path_factory.mktemp('uploads'), sample_bear_photo())


@contextlib.contextmanager
def serve(models: Path, home: Path, log_path: Path, pool: int):
    "voila on a free loopback port, started from nbs/apps so that it reads the apps' voila.py; always stopped."
    env = dict(os.environ, COURSE_MODELS=str(models), COURSE_APP_POOL=str(pool), JUPYTER_DATA_DIR=str(home / 'data'),
               JUPYTER_RUNTIME_DIR=str(home / 'runtime'), IPYTHONDIR=str(home / 'ipython'), XDG_CACHE_HOME=str(home / 'cache'),
               PYTHONWARNINGS='ignore')
    with app_server(ROOT, 'bears', env=env, log=log_path) as base:
        yield {'url': base + '/', 'port': int(base.rsplit(':', 1)[1]), 'log': log_path}


@pytest.fixture(scope='module')
def voila_server(models, tmp_path_factory):
    SHOTS.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with serve(models, tmp_path_factory.mktemp('jupyter'), SHOTS / 'voila.log', pool=2) as server:
        record('voila_start_to_serving', time.perf_counter() - t0)
        yield server


@pytest.fixture(scope='module')
def browser(tmp_path_factory):
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(**launch_options(tmp_path_factory.mktemp('chromium-profile'),
                                                                    viewport={'width': 900, 'height': 1100}))
        ctx.route(NOT_LOOPBACK, lambda route: route.abort())  # hermetic
        try: yield ctx
        finally: ctx.close()


def open_app(browser, voila_server) -> tuple[Page, str, list[str]]:
    page = browser.new_page()
    js_errors: list[str] = []
    page.on('pageerror', lambda e: js_errors.append(str(e)))
    t0 = time.perf_counter()
    page.goto(voila_server['url'], timeout=90_000)
    page.locator('.app-upload').wait_for(state='visible', timeout=60_000)
    page.locator('.app-classify').wait_for(state='visible')
    record('page_load_to_widgets_visible', time.perf_counter() - t0)
    kernel_id = re.search(r'"kernelId": "([0-9a-f-]{36})"', page.content()).group(1)
    return page, kernel_id, js_errors


def close_and_check_kernel_freed(page: Page, kernel_id: str, voila_server):
    # Voila shuts a page's kernel down from a `beforeunload` handler, which Playwright only runs when asked.
    page.close(run_before_unload=True)
    deadline = time.monotonic() + 20
    while f'Kernel shutdown: {kernel_id}' not in voila_server['log'].read_text():
        assert time.monotonic() < deadline, f'kernel {kernel_id} still running after its tab closed'
        time.sleep(0.2)


@pytest.fixture(scope='module')
def app(browser, voila_server):
    "One page shared by the upload tests (each leaves it ready for the next); closed by the last test."
    page, kernel_id, js_errors = open_app(browser, voila_server)
    state = {'page': page, 'kernel_id': kernel_id, 'js_errors': js_errors}
    yield state
    if not state.get('closed'): page.close(run_before_unload=True)


# ---------------------------------------------------------------- helpers
def upload(page: Page, path: Path, refused: bool = False):
    # The upload button keeps its <input type=file> out of the DOM: go through the file chooser.
    with page.expect_file_chooser() as chooser:
        page.locator('.app-upload').click()
    chooser.value.set_files(str(path))
    # The kernel answers once the bytes arrived: "Ready: <name>", or what is wrong with the file, by name.
    answer = page.locator('.app-result .error' if refused else '.app-result .info')
    expect(answer).to_contain_text(path.name if refused else f'Ready: {path.name}', timeout=60_000)


def classify(page: Page) -> str:
    t0 = time.perf_counter()
    page.locator('.app-classify').click()
    outcome = page.locator('.app-result .ok, .app-result .error')
    outcome.wait_for(state='visible', timeout=30_000)
    record('click_to_result', time.perf_counter() - t0)
    return outcome.inner_text()


def shown_probs(page: Page) -> dict[str, float]:
    rows = page.locator('.app-result .ok tr[data-label]')
    return {rows.nth(i).get_attribute('data-label'): float(rows.nth(i).get_attribute('data-prob')) for i in range(rows.count())}


def assert_no_traceback(page: Page):
    body = page.inner_text('body').lower()
    for leak in ('traceback', 'error when executing', 'exception', 'file "/'):
        assert leak not in body, body


def assert_classified_like(page: Page, predictor, path: Path):
    "The page shows the predictor's answer for `path` (shrunk as the app shrinks it): same label, every probability within 1e-4, the picture."
    want = predictor.predict(load_image(path, max_side=PHOTO_MAX_SIDE))
    text = classify(page)
    expect(page.locator('.app-result .ok')).to_be_visible()
    assert want.label in text.splitlines()[0], text
    got = shown_probs(page)
    assert got.keys() == want.probs.keys() and max(abs(got[k] - want.probs[k]) for k in got) < TOL, (got, want.probs)
    expect(page.locator('.widget-image')).to_be_visible()
    assert_no_traceback(page)


def shot(page: Page, name: str) -> Path:
    path = SHOTS / f'{name}.png'
    page.screenshot(path=str(path), full_page=True)
    return path


# ---------------------------------------------------------------- tests, in page order
def test_classify_without_a_file(app):
    page = app['page']
    expect(page.locator('.app-limits')).to_contain_text('up to 20 MB')  # the limit is stated on the page
    assert 'Please choose an image file first.' in classify(page)
    assert_no_traceback(page)


def test_good_photo_is_classified(app, inputs, predictor):
    page = app['page']
    upload(page, inputs['photo'].path)
    assert_classified_like(page, predictor, inputs['photo'].path)
    assert predictor.predict(inputs['photo'].path).label == 'grizzly'  # the sample photo is a grizzly
    good = shot(page, '01_good_photo')
    readme_image = ROOT / 'images' / 'app_bear_classifier.png'
    if not readme_image.exists() or os.environ.get('COURSE_UPDATE_SCREENSHOTS') == '1':  # keep routine runs from dirtying git
        readme_image.parent.mkdir(exist_ok=True)
        shutil.copy(good, readme_image)


BAD = ['text_as_jpg', 'truncated', 'empty', 'too_large', 'bomb']


@pytest.mark.parametrize('key', BAD)
def test_bad_file_gets_message_then_next_photo_classifies(app, inputs, predictor, key):
    page, bad = app['page'], inputs[key]
    upload(page, bad.path, refused=True)  # named as soon as it arrives (a file over the limit: as soon as it is chosen)
    assert bad.message in page.locator('.app-result .error').inner_text()
    text = classify(page)
    expect(page.locator('.app-result .error')).to_be_visible()
    assert bad.message in text and bad.path.name in text, text
    expect(page.locator('.widget-image')).to_be_hidden()
    assert_no_traceback(page)
    shot(page, f'02_bad_{key}')
    upload(page, inputs['photo'].path)
    assert_classified_like(page, predictor, inputs['photo'].path)


@pytest.mark.parametrize('key', ['rgba', 'grey', 'grey16', 'cmyk', 'gif', 'webp'])
def test_other_formats_and_colour_modes_classify(app, inputs, predictor, key):
    page = app['page']
    upload(page, inputs[key].path)
    assert_classified_like(page, predictor, inputs[key].path)
    shot(page, f'03_format_{key}')


def test_phone_photos_are_classified(app, inputs, predictor):
    "A 16 MB JPEG straight from a phone's camera, and an iPhone's HEIC, each followed by a small photo."
    page, phone = app['page'], inputs['phone']
    assert 15 * 2**20 < phone.path.stat().st_size < 20 * 2**20
    for key in ('phone', 'heic'):
        t0 = time.perf_counter()
        upload(page, inputs[key].path)
        record(f'{key}_upload_to_ready', time.perf_counter() - t0)
        assert_classified_like(page, predictor, inputs[key].path)
        shot(page, f'06_{key}_photo')
        upload(page, inputs['photo'].path)
        assert_classified_like(page, predictor, inputs['photo'].path)
    expect(page.locator('.app-upload-status')).to_be_empty()  # no "Sending..." left behind


def test_sample_model_says_its_answers_are_guesses(app):
    notice = app['page'].locator('.app-notice')
    expect(notice).to_be_visible()
    expect(notice).to_contain_text('generated sample pictures')
    expect(notice).to_contain_text('course make-model bears')
    shot(app['page'], '07_notice_sample_model')


def test_exif_rotated_photo_is_classified_upright(app, inputs, predictor):
    page = app['page']
    upload(page, inputs['exif_rotated'].path)
    assert_classified_like(page, predictor, upright_reference(inputs))
    from PIL import Image
    (w, h), box = Image.open(inputs['photo'].path).size, page.locator('.widget-image').bounding_box()
    assert Image.open(inputs['exif_rotated'].path).size == (h, w)  # the file stores it on its side...
    assert (box['width'] > box['height']) == (w > h)  # ...the preview stands the way the photo was taken
    shot(page, '04_exif_rotated')


def test_html_in_file_name_is_shown_as_text(app, inputs, predictor):
    page, up = app['page'], inputs['html_name']
    upload(page, up.path)  # waits for the literal text "Ready: <img src=x ...>bear.jpg"
    assert page.locator('.app-result img').count() == 0
    assert page.evaluate('document.title') != '1'
    assert_classified_like(page, predictor, up.path)
    shot(page, '05_html_file_name')


def test_closing_the_tab_frees_its_kernel(app, voila_server):
    assert not app['js_errors'], app['js_errors']
    app['closed'] = True
    close_and_check_kernel_freed(app['page'], app['kernel_id'], voila_server)


def relabelled_models(models: Path, dest: Path, **training) -> Path:
    "A copy of the demo models whose bear model's manifest tells another training story."
    shutil.copytree(models, dest)
    manifest = dest / 'bears' / 'manifest.json'
    m = json.loads(manifest.read_text())
    m['training'].update(training)
    manifest.write_text(json.dumps(m))
    return dest


@pytest.mark.parametrize('story', ['good', 'unlearned'])
def test_notice_follows_the_manifest(story, models, browser, tmp_path):
    "A model trained on real photos that beats chance clearly has no notice; one that does not has one."
    valid = {'metric': 'accuracy', 'value': 0.97 if story == 'good' else 0.37, 'chance': 0.36, 'items': 80}
    copy = relabelled_models(models, tmp_path / 'models', data='real', pretrained=True, valid=valid)
    with serve(copy, tmp_path / 'jupyter', tmp_path / 'voila.log', pool=1) as server:
        page, _, _ = open_app(browser, server)
        try:
            if story == 'good': expect(page.locator('.app-notice')).to_have_count(0)
            else: expect(page.locator('.app-notice')).to_contain_text('has not learned to tell these apart yet')
            shot(page, f'08_notice_{story}_model')
        finally: page.close(run_before_unload=True)


def test_visitor_cannot_execute_code(voila_server, tmp_path):
    "Voila forwards only widget (comm) and kernel-info messages; an execute_request is dropped."
    from websocket import create_connection
    html = NO_PROXY.open(voila_server['url'], timeout=90).read().decode()  # starts a kernel, as a visitor would
    kernel_id = re.search(r'"kernelId": "([0-9a-f-]{36})"', html).group(1)
    ws = create_connection(f"ws://127.0.0.1:{voila_server['port']}/api/kernels/{kernel_id}/channels", timeout=30)
    session = uuid.uuid4().hex

    def send(msg_type: str, content: dict) -> str:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({'header': {'msg_id': msg_id, 'msg_type': msg_type, 'session': session, 'username': 'visitor',
                                       'version': '5.3', 'date': '2026-01-01T00:00:00Z'},
                            'parent_header': {}, 'metadata': {}, 'content': content, 'channel': 'shell', 'buffers': []}))
        return msg_id

    marker = tmp_path / 'pwned'
    exec_id = send('execute_request', {'code': f"open({str(marker)!r}, 'w').write('x')", 'silent': False,
                                       'store_history': False, 'user_expressions': {}, 'allow_stdin': False})
    info_id = send('kernel_info_request', {})  # the shell channel is FIFO: its reply comes after any execute_reply
    seen = []
    try:
        while (info_id, 'kernel_info_reply') not in seen:
            raw = ws.recv()
            if isinstance(raw, bytes): continue
            msg = json.loads(raw)
            seen.append((msg['parent_header'].get('msg_id'), msg['header']['msg_type']))
    finally: ws.close()
    assert not any(pid == exec_id for pid, _ in seen), seen
    assert not marker.exists()
    time.sleep(0.5)
    assert 'Received message of type "execute_request", which is not allowed' in voila_server['log'].read_text()


def test_no_files_can_be_downloaded(voila_server):
    for path in ['voila/files/bear_classifier.ipynb', 'voila/files/voila.py', 'voila/files/cat_or_dog.ipynb']:
        with pytest.raises(urllib.error.HTTPError) as err:
            NO_PROXY.open(voila_server['url'] + path, timeout=10)
        assert err.value.code == 403, (path, err.value.code)
