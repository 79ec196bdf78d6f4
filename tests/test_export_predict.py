"""Models exported for apps: the fastai-free predictor agrees with `learn.predict`, refuses broken model
folders and bad uploads with clear messages, and never imports fastai (nor torch when ONNX Runtime is there).
The manifest records what the model was trained on; an 8-bit graph is used only where its check passed;
a GPU that fails to start costs a warning, not the app."""
from __future__ import annotations

import datetime
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app_inputs import make_inputs, upright_reference
from demo_model import demo_models_dir, sample_bear_photo
from optional import require
from course_utils.predict import (INT8_FILE, ImageInputError, ModelError, load_image, load_predictor, onnxruntime_available,
                                  read_manifest)


BACKENDS = ['torch'] + (['onnx'] if onnxruntime_available() else [])
NEEDS_ONNX = require(onnxruntime_available(), 'ONNX Runtime')
TOL = 1e-4


# ---------------------------------------------------------------- parity with learn.predict, per resize method
@pytest.fixture(scope='module')
def pets(tmp_path_factory):
    "A small trained cat/dog learner on the pets sample, and pictures of awkward shapes to predict."
    from fastai.vision.all import Resize, resnet18, vision_learner
    from course_utils.core import CPUSpeedup
    from course_utils.samples import build_pets
    root = tmp_path_factory.mktemp('pets')
    files = sorted((build_pets(root / 'pets', n_per_breed=2) / 'images').glob('*.jpg'))
    learn = vision_learner(cat_dog_loaders(files, Resize(48)), resnet18, pretrained=False)
    learn.remove_cbs([cb for cb in learn.cbs if isinstance(cb, CPUSpeedup)])  # predictions in float32, like the app
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 3e-3)
    rng = np.random.default_rng(1)
    pictures = files[:3]
    for name, (w, h) in {'wide': (300, 110), 'tall': (90, 260), 'tiny': (31, 19)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).resize((w, h)).save(root / f'{name}.png')
        pictures.append(root / f'{name}.png')
    return learn, files, pictures, root


def cat_dog_loaders(files, item_tfms, batch_tfms=None):
    "The loaders of every learner here: the same files, split and batch size, with the given transforms."
    from fastai.vision.all import ImageDataLoaders
    from course_utils.export import cat_or_dog
    return ImageDataLoaders.from_path_func(files[0].parent, files, cat_or_dog, valid_pct=0.25, seed=0, bs=16,
                                           item_tfms=item_tfms, batch_tfms=batch_tfms, num_workers=0)


def transforms(method: str):
    "Item and batch transforms of each resize method the predictor must reproduce."
    from fastai.vision.all import Normalize, RandomResizedCrop, Resize, aug_transforms, imagenet_stats
    return {
        'crop': (Resize(48), None),
        'squish': (Resize((40, 56), method='squish'), None),
        'pad_zeros': (Resize(48, method='pad', pad_mode='zeros'), None),
        'pad_reflection': (Resize((56, 40), method='pad', pad_mode='reflection'), [Normalize.from_stats(*imagenet_stats)]),
        'random_resized_crop': (RandomResizedCrop(48, min_scale=0.5), aug_transforms()),  # lesson 2's recipe
    }[method]


METHODS = ['crop', 'squish', 'pad_zeros', 'pad_reflection', 'random_resized_crop']


@pytest.mark.parametrize('method', METHODS)
def test_predictor_matches_learn_predict(pets, method):
    from fastai.vision.all import Normalize, PILImage
    from course_utils.export import export_for_app
    learn, files, pictures, root = pets
    item_tfms, batch_tfms = transforms(method)
    learn.dls = cat_dog_loaders(files, item_tfms, batch_tfms)
    out = export_for_app(learn, root / method)
    manifest = read_manifest(out)
    assert manifest['input']['method'] == {'pad_zeros': 'pad', 'pad_reflection': 'pad'}.get(method, method)
    assert (manifest['input']['normalize'] is not None) == any(isinstance(t, Normalize) for t in batch_tfms or [])
    want = {p: learn.predict(PILImage.create(p)) for p in pictures}
    for backend in BACKENDS:
        predictor = load_predictor(out, backend)
        for p, (label, _, probs) in want.items():
            got = predictor.predict(p)
            assert got.label == str(label), (backend, p.name)
            diff = np.abs(np.array(list(got.probs.values())) - probs.numpy()).max()
            assert diff < TOL, (backend, p.name, diff)
            # The same bytes, or an already opened image, give the same answer.
            assert predictor.predict(p.read_bytes()).probs == got.probs
            assert predictor.predict(Image.open(p).convert('RGB')).probs == got.probs


def test_wrong_preprocessing_is_detected(pets):
    "The 1e-4 tolerance is meaningful: preprocessing a wide picture the wrong way changes the answer by far more."
    from fastai.vision.all import PILImage, Resize
    from course_utils.export import export_for_app
    learn, files, pictures, root = pets
    learn.dls = cat_dog_loaders(files, Resize(48))
    out = export_for_app(learn, root / 'wrong')
    manifest = json.loads((out / 'manifest.json').read_text())
    manifest['input'] |= {'method': 'pad', 'pad_mode': 'zeros'}
    (out / 'manifest.json').write_text(json.dumps(manifest))
    wrong = load_predictor(out)
    diffs = [np.abs(np.array(list(wrong.predict(p).probs.values())) - learn.predict(PILImage.create(p))[2].numpy()).max()
             for p in pictures]
    assert max(diffs) > 100 * TOL, diffs


# ---------------------------------------------------------------- the demo model and broken model folders
@pytest.fixture(scope='module')
def bears_model():
    return demo_models_dir() / 'bears'


def test_demo_model_learned_and_is_complete(bears_model):
    expected = ['manifest.json', 'model.int8.onnx', 'model.onnx', 'model.safetensors'] if onnxruntime_available() else \
               ['manifest.json', 'model.onnx', 'model.safetensors']
    assert sorted(p.name for p in bears_model.iterdir()) == expected
    m = read_manifest(bears_model)
    assert m['vocab'] == ['black', 'grizzly', 'teddy'] and m['model']['arch'] == 'resnet18'
    assert {'fastai', 'torch', 'onnx'} <= set(m['versions']) and m['input']['size'] == [64, 64]  # the sample's size
    t = m['training']
    assert (t['data'], t['dataset'], t['pretrained']) == ('sample', 'bears', False), t
    assert t['valid']['value'] > 0.6 and t['valid']['chance'] < 0.5, t  # three kinds: chance about 1/3
    if onnxruntime_available(): assert m['int8']['items'] == t['valid']['items'], m['int8']


def _broken_copy(src: Path, dest: Path, edit) -> Path:
    shutil.copytree(src, dest)
    m = json.loads((dest / 'manifest.json').read_text())
    edit(m)
    (dest / 'manifest.json').write_text(json.dumps(m))
    return dest


BROKEN = {
    'unknown_arch': (lambda m: m['model'].update(arch='resnet99'), "unknown architecture 'resnet99'"),
    'other_export': (lambda m: m.update(export_id='0' * 32), 'does not belong to'),
    'too_many_labels': (lambda m: m.update(vocab=['black', 'grizzly', 'teddy', 'panda']), r'\(4 labels\)'),
    'bad_method': (lambda m: m['input'].update(method='stretch'), "'input.method' must be one of"),
    'no_vocab': (lambda m: m.pop('vocab'), "'vocab' is missing"),
}


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('case', BROKEN)
def test_broken_manifest_gives_clear_error(bears_model, tmp_path, backend, case):
    edit, message = BROKEN[case]
    broken = _broken_copy(bears_model, tmp_path / case, edit)
    with pytest.raises(ModelError, match=message):
        load_predictor(broken, backend)


@NEEDS_ONNX
def test_onnx_graph_must_match_manifest_input_size(bears_model, tmp_path):
    # The PyTorch network accepts any size, so only the ONNX graph can tell that the manifest lies about it.
    broken = _broken_copy(bears_model, tmp_path / 'size', lambda m: m['input'].update(size=[96, 96]))
    with pytest.raises(ModelError, match=r'\[96, 96\] images'): load_predictor(broken, 'onnx')


def test_unreadable_manifest_and_mismatched_weights(bears_model, tmp_path):
    broken = _broken_copy(bears_model, tmp_path / 'json', lambda m: None)
    (broken / 'manifest.json').write_text('{"format_version": 1, "vocab": [')
    with pytest.raises(ModelError, match='not valid JSON'): load_predictor(broken)
    # A resnet34 manifest over resnet18 weights: the PyTorch backend names the mismatch.
    arch = _broken_copy(bears_model, tmp_path / 'arch', lambda m: m['model'].update(arch='resnet34'))
    with pytest.raises(ModelError, match='do not fit the architecture'): load_predictor(arch, 'torch')
    (arch / 'model.safetensors').write_bytes(b'not safetensors')
    with pytest.raises(ModelError, match='not a readable safetensors file'): load_predictor(arch)


@NEEDS_ONNX
def test_optimised_graph_is_cached_per_export_and_rebuilt_when_damaged(bears_model, tmp_path, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    photo = sample_bear_photo()
    first = load_predictor(bears_model, 'onnx').predict(photo)
    cached = list((tmp_path / 'course_utils' / 'onnx').iterdir())
    assert len(cached) == 1 and cached[0].name.startswith(read_manifest(bears_model)['export_id']), cached
    again = load_predictor(bears_model, 'onnx').predict(photo)
    cached[0].write_bytes(b'damaged')
    rebuilt = load_predictor(bears_model, 'onnx').predict(photo)
    assert cached[0].stat().st_size > 1_000_000  # a real graph again
    for p in (again, rebuilt):
        assert p.label == first.label and max(abs(p.probs[k] - first.probs[k]) for k in p.probs) < 1e-6


# ---------------------------------------------------------------- training provenance and the 8-bit graph
COLOUR_COUNTS = {'train': {'red': 32, 'blue': 32}, 'valid': {'red': 6, 'blue': 2}}  # always saying red scores 6/8


def _colour_pictures(root: Path) -> Path:
    "Noisy pictures of varied sizes, reddish or bluish, in train/ and valid/ folders with the counts above."
    rng = np.random.default_rng(0)
    for split, counts in COLOUR_COUNTS.items():
        for label, n in counts.items():
            (root / split / label).mkdir(parents=True)
            for i in range(n):
                colour = np.array((170, 60, 60) if label == 'red' else (60, 60, 170)) * rng.uniform(0.6, 1.3)
                h, w = rng.integers(40, 90, 2)
                a = np.clip(rng.normal(colour, 45, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(a).save(root / split / label / f'{i}.png')
    return root


def colour_loaders(root: Path, valid: str = 'valid'):
    from fastai.vision.all import ImageDataLoaders, Resize
    return ImageDataLoaders.from_folder(root, train='train', valid=valid, item_tfms=Resize(32), bs=8, num_workers=0)


@pytest.fixture(scope='module')
def colours(tmp_path_factory):
    "A resnet18 trained to tell red pictures from blue ones, exported on real (not sample) data with its int8 graph."
    from fastai.vision.all import resnet18, set_seed, vision_learner
    from course_utils import core
    from course_utils.export import export_for_app
    root = tmp_path_factory.mktemp('int8')
    set_seed(0)
    learn = vision_learner(colour_loaders(_colour_pictures(root / 'colours')), resnet18, pretrained=False)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(5, 1e-2)  # 100% on the validation set with any seed we tried
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv('COURSE_SAMPLE', raising=False)
        mp.setattr(core, '_data_kinds', {})  # no sample loaded in this process, whatever ran before
        out = export_for_app(learn, root / 'model', int8=onnxruntime_available())
    return learn, out


def test_manifest_records_training_data_and_validation_score(colours, tmp_path, monkeypatch):
    from course_utils import core
    from course_utils.export import export_for_app
    learn, out = colours
    t = read_manifest(out)['training']
    probs, targets = learn.get_preds(dl=learn.dls.valid)
    assert (t['data'], t['dataset'], t['pretrained']) == ('real', 'colours', False), t
    assert t['valid']['value'] >= 0.875, t  # it learnt, so the int8 tests below compare confident answers
    assert t['date'] == datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    assert t['valid'] == {'metric': 'accuracy', 'value': float((probs.argmax(1) == targets).float().mean()),
                          'items': 8, 'chance': 0.75}, t
    # On the sample, with the data set's name and the weights' origin given.
    monkeypatch.setenv('COURSE_SAMPLE', '1')
    monkeypatch.setattr(core, '_data_kinds', {})
    t = read_manifest(export_for_app(learn, tmp_path / 'm', dataset='reds', pretrained=True))['training']
    assert (t['data'], t['dataset'], t['pretrained']) == ('sample', 'reds', True), t


def test_no_validation_set_is_recorded_as_such(colours, tmp_path):
    from fastai.vision.all import resnet18, vision_learner
    from course_utils.export import export_for_app
    learn, out = colours
    empty = vision_learner(colour_loaders(out.parent / 'colours', valid='none'), resnet18, pretrained=False)
    assert len(empty.dls.valid_ds) == 0
    m = read_manifest(export_for_app(empty, tmp_path / 'm', int8=True))
    assert m['training']['valid'] is None and 'int8' not in m and m['files']['onnx_int8'] is None, m
    assert not (tmp_path / 'm' / INT8_FILE).exists()


@NEEDS_ONNX
def test_int8_export_records_its_check(colours):
    learn, out = colours
    m = read_manifest(out)
    assert m['files']['onnx_int8'] == INT8_FILE and (out / INT8_FILE).is_file()
    assert (out / INT8_FILE).stat().st_size < (out / 'model.onnx').stat().st_size / 3  # 8-bit weights
    q = m['int8']
    assert (q['items'], q['calibration_items']) == (8, 64), q  # the whole validation set; every training picture
    assert q['agreement'] == 1.0 and q['accuracy_int8'] == q['accuracy_fp32'] == m['training']['valid']['value'], q
    assert q['passed'] is True, q


@NEEDS_ONNX
def test_int8_answers_agree_with_fp32(colours):
    learn, out = colours
    fp32, int8 = load_predictor(out, precision='fp32'), load_predictor(out)
    assert (fp32.precision, int8.precision) == ('fp32', 'int8')
    pictures = sorted((out.parent / 'colours').rglob('*.png'))
    for p in pictures:
        a, b = fp32.probabilities(load_image(p)), int8.probabilities(load_image(p))
        assert a.argmax() == b.argmax() and np.abs(a - b).max() < 0.1, (p, a, b)


def _edited_copy(src: Path, dest: Path, edit) -> Path:
    "A copy of the export in `src`, with `edit(folder, manifest)` applied."
    shutil.copytree(src, dest)
    m = json.loads((dest / 'manifest.json').read_text())
    edit(dest, m)
    (dest / 'manifest.json').write_text(json.dumps(m))
    return dest


def _int8_of_another_export(folder: Path, m: dict):
    import onnx
    graph = onnx.load(str(folder / INT8_FILE))
    onnx.helper.set_model_props(graph, {'export_id': '0' * 32})
    onnx.save(graph, str(folder / INT8_FILE))


@NEEDS_ONNX
def test_predictor_uses_int8_only_where_its_check_passed(colours, tmp_path, caplog, monkeypatch):
    learn, out = colours
    assert load_predictor(out).precision == 'int8' and "precision='int8'" in repr(load_predictor(out))
    assert load_predictor(out, 'torch').precision == 'fp32'
    with pytest.raises(ModelError, match="backend='onnx'"): load_predictor(out, 'torch', precision='int8')
    failed = _edited_copy(out, tmp_path / 'failed', lambda d, m: m['int8'].update(passed=False))
    missing = _edited_copy(out, tmp_path / 'missing', lambda d, m: (d / INT8_FILE).unlink())
    other = _edited_copy(out, tmp_path / 'other', _int8_of_another_export)
    for folder, message in ((failed, 'passed its accuracy check'), (missing, 'passed its accuracy check'), (other, 'does not belong')):
        caplog.clear()
        # The optimised graph cached for this export id would stand in for a replaced file.
        monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache' / folder.name))
        with caplog.at_level(logging.WARNING, logger='course_utils.predict'):
            assert load_predictor(folder).precision == 'fp32', folder.name
        assert len(caplog.records) == (folder is other), caplog.records  # only a graph of another export is news
        with pytest.raises(ModelError, match=message): load_predictor(folder, precision='int8')


# ---------------------------------------------------------------- GPU when there is one, else the CPU
class _SessionSpy:
    "Stands in for onnxruntime.InferenceSession: records the providers asked for, and fails CUDA when told to."
    def __init__(self, real, cuda_fails: bool):
        self.real, self.cuda_fails, self.asked = real, cuda_fails, []

    def __call__(self, path, options=None, providers=None, **kw):
        self.asked.append(list(providers or []))
        if self.cuda_fails and 'CUDAExecutionProvider' in (providers or []):
            raise RuntimeError('CUDA failure 100: no CUDA-capable device is detected')
        return self.real(path, options, providers=providers, **kw)


@NEEDS_ONNX
@pytest.mark.parametrize('cuda_fails', [True, False], ids=['session_raises', 'provider_dropped'])
def test_onnx_falls_back_to_cpu_when_the_gpu_does_not_start(colours, monkeypatch, caplog, cuda_fails):
    import onnxruntime
    if not cuda_fails and 'CUDAExecutionProvider' in onnxruntime.get_available_providers(): pytest.skip('a GPU is here')
    learn, out = colours
    spy = _SessionSpy(onnxruntime.InferenceSession, cuda_fails)
    monkeypatch.setattr(onnxruntime, 'InferenceSession', spy)
    monkeypatch.setattr(onnxruntime, 'get_available_providers', lambda: ['CUDAExecutionProvider', 'CPUExecutionProvider'])
    with caplog.at_level(logging.WARNING, logger='course_utils.predict'):
        predictor = load_predictor(out, 'onnx')
    assert predictor.device == 'cpu' and predictor.predict(sorted((out.parent / 'colours').rglob('*.png'))[0]).label
    assert spy.asked[0] == ['CUDAExecutionProvider', 'CPUExecutionProvider'] and spy.asked[-1] == ['CPUExecutionProvider']
    assert len(caplog.records) == 1 and 'could not use the GPU' in caplog.text, caplog.text


@NEEDS_ONNX
def test_device_cpu_never_asks_for_the_gpu(colours, monkeypatch, caplog):
    import onnxruntime
    learn, out = colours
    spy = _SessionSpy(onnxruntime.InferenceSession, cuda_fails=True)
    monkeypatch.setattr(onnxruntime, 'InferenceSession', spy)
    monkeypatch.setattr(onnxruntime, 'get_available_providers', lambda: pytest.fail('asked which providers there are'))
    with caplog.at_level(logging.WARNING, logger='course_utils.predict'):
        predictor = load_predictor(out, 'onnx', device='cpu')
    assert (predictor.device, predictor.precision) == ('cpu', 'int8') and not caplog.records
    assert spy.asked and all(p == ['CPUExecutionProvider'] for p in spy.asked), spy.asked


def test_torch_falls_back_to_cpu_when_the_gpu_does_not_start(colours, monkeypatch, caplog):
    import torch
    if torch.cuda.is_available(): pytest.skip('a GPU is here')
    learn, out = colours
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)  # a listed GPU that this build cannot use
    with caplog.at_level(logging.WARNING, logger='course_utils.predict'):
        predictor = load_predictor(out, 'torch')
    assert predictor.device == 'cpu' and len(caplog.records) == 1 and 'PyTorch could not use the GPU' in caplog.text
    caplog.clear()
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with caplog.at_level(logging.WARNING, logger='course_utils.predict'):
        assert load_predictor(out, 'torch', device='cuda').device == 'cpu'
    assert len(caplog.records) == 1 and 'no GPU here' in caplog.text


# ---------------------------------------------------------------- uploads
@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp('uploads'), sample_bear_photo())


def test_bad_uploads_get_friendly_messages_good_ones_classify(bears_model, inputs):
    predictor = load_predictor(bears_model)
    reference = predictor.predict(inputs['photo'].path)
    assert reference.label == 'grizzly', reference  # a training picture of the sample
    for up in inputs.values():
        if up.message:
            with pytest.raises(ImageInputError, match=up.message):
                predictor.predict(up.path.read_bytes(), name=f"'{up.path.name}'")
        else:
            p = predictor.predict(up.path.read_bytes())
            assert p.label in predictor.vocab and abs(sum(p.probs.values()) - 1) < 1e-5, up.key
    # Colour conversions keep the picture recognisable.
    for key in [k for k in ('webp', 'cmyk', 'gif', 'heic') if k in inputs]:
        assert predictor.predict(inputs[key].path).label == 'grizzly', key


def test_exif_rotation_is_applied(bears_model, inputs):
    stored = Image.open(inputs['exif_rotated'].path)
    upright = load_image(inputs['exif_rotated'].path)
    assert upright.size == stored.size[::-1] == Image.open(inputs['photo'].path).size
    ref = upright_reference(inputs)
    assert np.array_equal(np.asarray(upright), np.asarray(Image.open(ref)))
    predictor = load_predictor(bears_model)
    assert predictor.predict(inputs['exif_rotated'].path) == predictor.predict(ref)


def test_transparent_and_16_bit_images_convert_sensibly(inputs):
    rgba = load_image(inputs['rgba'].path)
    assert rgba.mode == 'RGB' and rgba.getpixel((0, 0)) == (255, 255, 255)  # fully transparent corner -> white
    grey16, grey = load_image(inputs['grey16'].path), load_image(inputs['grey'].path)
    assert np.abs(np.asarray(grey16, int) - np.asarray(grey, int)).max() <= 1


# ---------------------------------------------------------------- what the predictor's process imports
@pytest.mark.parametrize('backend', BACKENDS)
def test_predictor_process_never_imports_fastai(bears_model, backend):
    code = f"""
import json, sys
from course_utils.predict import load_predictor
p = load_predictor({str(bears_model)!r}, {backend!r}).predict({str(sample_bear_photo())!r})
print(json.dumps(dict(label=p.label, fastai='fastai' in sys.modules, torch='torch' in sys.modules)))
"""
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r['label'] == 'grizzly' and not r['fastai'], r
    if backend == 'onnx': assert not r['torch'], r
