"""Lesson 2 end to end on the bears sample: search skipped offline, corrupt files found, a model that beats chance.

The course's own code in the lesson (the search-and-download loop, the widgets app, the cleaner's loops) only
does its real work with a network or a person at the screen. The tests below take those cells' code from the
lesson notebook and run it here, with a loopback web server in place of the internet and the tests in place of
the person, so that what is tested is the lesson's code, not a copy of it.
"""
import datetime
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from fastai.vision.all import (CategoryBlock, DataBlock, ImageBlock, PILImage, RandomSplitter, Resize,
                               get_image_files, parent_label, resnet18, verify_images, vision_learner)

from course_utils import core
from course_utils.samples import build_bears

from loopback import serve_folder
from notebook_runner import NBS, run_notebook

LESSON = 'lessons/02_production.ipynb'
pytestmark = pytest.mark.notebook(LESSON)
BEAR_TYPES = ('grizzly', 'black', 'teddy')
PREDICTION = re.compile(r'Prediction: (\w+); Probability: (\d\.\d{4})')


def test_lesson_runs_offline_on_the_sample():
    run = run_notebook(LESSON)
    assert run.error is None, run.error
    text = run.outputs_text()
    assert 'Not searching the web (COURSE_SAMPLE=1): using the bears data set instead.' in text


def test_course_search_loop_is_skipped_quickly_offline():
    run = run_notebook(LESSON)
    assert 'Sample mode (COURSE_SAMPLE=1): not searching the web.' in run.outputs_text()
    cell = run.code_cell('download_images(dest, urls=results)')
    timing = cell.metadata['execution']
    took = (datetime.datetime.fromisoformat(timing['shell.execute_reply'].replace('Z', '+00:00'))
            - datetime.datetime.fromisoformat(timing['iopub.execute_input'].replace('Z', '+00:00')))
    assert took.total_seconds() < 10, f'the skipped search cell took {took}'


def test_corrupt_downloads_are_found_and_removed():
    run = run_notebook(LESSON)
    # The sample holds three broken downloads (an HTML page, an empty file, a truncated JPEG).
    assert 'Removed 3 files that could not be opened' in run.outputs_text()


def test_bear_classifier_beats_chance():
    run = run_notebook(LESSON)
    assert run.metric('error_rate', lesson='02_production') < 0.35  # guessing among three kinds: 0.67


def test_cleaner_with_no_picks_changes_nothing():
    run = run_notebook(LESSON)
    text = run.outputs_text()
    assert 'to delete: [] · to move: []' in text
    assert 'Nothing was selected in the cleaner: no file changed.' in text


def test_executed_lesson_shows_the_prediction_of_its_simulated_upload():
    run = run_notebook(LESSON)
    found = PREDICTION.findall(run.outputs_text())
    assert found, 'the lesson printed no prediction'
    label, prob = found[-1]
    assert label in BEAR_TYPES and 0.3333 <= float(prob) <= 1  # the most likely of three labels


# The lesson's own cells, run in this process

def lesson_cell(marker: str) -> str:
    "The code of the one code cell of the lesson that contains `marker`."
    nb = nbformat.read(NBS / LESSON, as_version=4)
    hits = [c.source for c in nb.cells if c.cell_type == 'code' and marker in c.source]
    assert len(hits) == 1, f'{len(hits)} code cells of {LESSON} contain {marker!r}'
    return hits[0]


def lesson_cells(first: str, last: str) -> list[str]:
    "The code of the lesson's code cells from the one that contains `first` to the one that contains `last`."
    code = [c.source for c in nbformat.read(NBS / LESSON, as_version=4).cells if c.cell_type == 'code']
    start, end = code.index(lesson_cell(first)), code.index(lesson_cell(last))
    assert start <= end, (first, last)
    return code[start:end + 1]


def lesson_namespace(**names) -> dict:
    "A namespace with what the lesson imports (its import lines, without `setup_course()`) and `names`."
    from IPython.display import display  # a builtin in a notebook's kernel
    ns = {'__name__': 'lesson02', 'display': display}
    imports = [l for l in lesson_cell('from fastai.vision.all import *').splitlines() if l.startswith(('from ', 'import '))]
    exec('\n'.join(imports), ns)
    ns.update(names)
    return ns


def run_cells(ns: dict, *sources: str):
    for src in sources: exec(compile(src, LESSON, 'exec'), ns)


@pytest.fixture(scope='module')
def bears(tmp_path_factory) -> Path:
    "The bears sample without its broken files (as the lesson leaves it after `verify_images`); do not change it."
    path = build_bears(tmp_path_factory.mktemp('sample') / 'bears')
    verify_images(get_image_files(path)).map(Path.unlink)
    return path


def small_learner(path: Path):
    "An untrained ResNet-18 on the pictures in `path`: its predictions mean nothing, but they have the lesson's form."
    dls = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=get_image_files, get_y=parent_label,
                    splitter=RandomSplitter(valid_pct=0.2, seed=42), item_tfms=Resize(64)).dataloaders(path, bs=16, num_workers=0)
    return vision_learner(dls, resnet18, pretrained=False)


def browser_upload(fn: Path) -> dict:
    "The state update a browser sends to the kernel when `fn` is chosen in an ipywidgets 8 `FileUpload`."
    data = fn.read_bytes()
    return {'value': [{'name': fn.name, 'type': 'image/jpeg', 'size': len(data),
                       'last_modified': int(fn.stat().st_mtime * 1000), 'content': memoryview(data)}]}


def test_widget_app_classifies_an_upload(bears):
    learn = small_learner(bears)
    ns = lesson_namespace(learn_inf=learn, path=bears)
    run_cells(ns, *lesson_cells('btn_upload = widgets.FileUpload()', "widgets.Label('Select your bear!')"))
    assert ns['lbl_pred'].value == ''
    fn = get_image_files(bears / 'grizzly')[3]
    ns['btn_upload'].set_state(browser_upload(fn))
    assert ns['btn_upload'].value[0].content.tobytes() == fn.read_bytes()
    ns['btn_run'].click()
    m = PREDICTION.fullmatch(ns['lbl_pred'].value)
    assert m, f'the label reads {ns["lbl_pred"].value!r}'
    pred, pred_idx, probs = learn.predict(PILImage.create(fn))
    assert m[1] == pred and m[1] in BEAR_TYPES
    assert float(m[2]) == pytest.approx(float(probs[pred_idx]), abs=1e-4)


def files(path: Path) -> dict[Path, bytes]:
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob('*')) if p.is_file()}


def cleaner_over(path: Path):
    "The lesson's cleaner over a learner on `path`, in a namespace that holds the lesson's `path` and `cleaner`."
    ns = lesson_namespace(learn=small_learner(path), path=path)
    run_cells(ns, lesson_cell('cleaner = ImageClassifierCleaner(learn)'))
    return ns, ns['cleaner']


def pick(cleaner, i: int, choice: str) -> Path:
    "Choose `choice` ('<Delete>' or a label) in the menu under the `i`th picture, as a person would; returns its file."
    menu = cleaner.iw.widget.children[i].children[1]
    assert choice in menu.options
    menu.value = choice
    return Path(cleaner.fns[i])


DELETE_LOOP, MOVE_LOOP = 'for idx in cleaner.delete():', 'for idx,cat in cleaner.change():'  # the course's two loops


def test_course_cleaner_loops_delete_and_move_the_picked_files(bears, tmp_path):
    # Names that differ from folder to folder, so that no move meets a file of the same name (the next test has that case).
    path = tmp_path / 'bears'
    for fn in get_image_files(bears):
        (path / fn.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(fn, path / fn.parent.name / f'{fn.parent.name}_{fn.name}')
    ns, cleaner = cleaner_over(path)
    shown = cleaner.dd_cats.value
    others = [c for c in BEAR_TYPES if c != shown]
    before = files(path)
    deleted = [pick(cleaner, 0, '<Delete>'), pick(cleaner, 3, '<Delete>')]
    moved = {pick(cleaner, 1, others[0]): others[0], pick(cleaner, 4, others[1]): others[1]}
    assert files(path) == before  # choosing changes no file
    run_cells(ns, lesson_cell(DELETE_LOOP), lesson_cell(MOVE_LOOP))
    expected = {k: v for k, v in before.items() if path / k not in deleted and path / k not in moved}
    expected |= {Path(label) / fn.name: before[fn.relative_to(path)] for fn, label in moved.items()}
    assert files(path) == expected


def test_course_move_stops_at_a_namesake_and_apply_cleaner_does_not(bears, tmp_path):
    path = tmp_path / 'bears'
    shutil.copytree(bears, path)  # every folder numbered 00000001.jpg, 00000002.jpg, ... as download_images numbers them
    ns, cleaner = cleaner_over(path)
    target = next(c for c in BEAR_TYPES if c != cleaner.dd_cats.value)
    fn = pick(cleaner, 2, target)
    namesake = path / target / fn.name
    assert namesake.exists()
    before = files(path)
    run_cells(ns, lesson_cell(DELETE_LOOP))
    with pytest.raises(shutil.Error, match='already exists'): run_cells(ns, lesson_cell(MOVE_LOOP))
    assert files(path) == before
    run_cells(ns, lesson_cell('apply_cleaner(cleaner, path)'))
    after = files(path)
    assert not fn.exists() and after[namesake.relative_to(path)] == before[namesake.relative_to(path)]
    assert after[Path(target) / f'{fn.stem}_1{fn.suffix}'] == before[fn.relative_to(path)]
    assert len(after) == len(before)


@pytest.fixture
def picture_server(bears):
    "A loopback web server that serves the sample's pictures at <base>/<label>/<name>."
    with serve_folder(bears) as url: yield url


def test_course_search_loop_downloads_one_folder_per_bear_type(fastai_home, monkeypatch, capsys, bears, picture_server):
    "Online (faked): the lesson's `search_images` and download loop fill ~/.fastai/data/bears, and gather_images uses that."
    import ddgs
    asked = []
    class FakeDDGS:  # what DuckDuckGo answers, with addresses on the loopback server
        def images(self, query, max_results):
            asked.append((query, max_results))
            label = query.removesuffix(' bear')
            return [{'title': f'{query} {i}', 'image': f'{picture_server}/{label}/{fn.name}'}
                    for i, fn in enumerate(get_image_files(bears / label)[:3])]
    monkeypatch.setattr(ddgs, 'DDGS', FakeDDGS)
    monkeypatch.setattr(core, '_reachable', lambda host, port, timeout: host == 'duckduckgo.com')
    ns = lesson_namespace()
    search_def = lesson_cell('def search_images(')
    settings = lesson_cell("bear_types = 'grizzly','black','teddy'")
    loop = lesson_cell('download_images(dest, urls=results)')
    run_cells(ns, search_def, settings, loop)
    path = ns['path']
    assert path == fastai_home / 'data' / 'bears'
    assert asked == [(f'{o} bear', 150) for o in BEAR_TYPES]
    got = get_image_files(path)
    assert sorted((p.parent.name, p.read_bytes()) for p in got) == \
        sorted((o, fn.read_bytes()) for o in BEAR_TYPES for fn in get_image_files(bears / o)[:3])
    capsys.readouterr()
    run_cells(ns, loop)  # a second run leaves the folder alone
    assert len(asked) == 3 and f'{path} is already there: not searching again.' in capsys.readouterr().out
    run_cells(ns, lesson_cell('path = gather_images('))
    assert ns['path'] == path and 'already holds images for every label (grizzly: 3, black: 3, teddy: 3): using them' in capsys.readouterr().out


def test_p_value_aside_finds_significance_in_noise():
    "The aside's simulation: some pure-noise features pass p < 0.05 (its own assert checks how many), and it says so."
    text = run_notebook(LESSON).outputs_text()
    found = re.search(r"(\d+) of 100 pure-noise features are 'significant' \(p < 0\.05\)", text)
    assert found and 1 <= int(found.group(1)) <= 15, text[-2000:]
    assert re.search(r"on fresh data, \d+ of the \d+ earlier 'discoveries' are significant again", text)
