"""Uploads for testing the apps and the predictor: one good photo, and every kind of awkward or hostile file.

`make_inputs(folder, photo)` writes them next to each other and returns `Upload`s that say what the app
must answer: `message` (a phrase of the friendly error) for files it must refuse, `None` for files
it must classify. Shared by tests/test_export_predict.py and tests/test_apps_browser.py.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from course_utils.predict import HEIF, MAX_UPLOAD_BYTES


@dataclass(frozen=True)
class Upload:
    key: str
    path: Path
    message: str | None  # None: must be classified; else a phrase of the error message


def _save(im: Image.Image, path: Path, fmt: str, **kw) -> Path:
    im.save(path, fmt, **kw)
    return path


def make_inputs(folder: Path, photo: Path) -> dict[str, Upload]:
    "Write the test uploads into `folder`, derived from the RGB JPEG `photo`."
    folder.mkdir(parents=True, exist_ok=True)
    im = Image.open(photo).convert('RGB')
    data = photo.read_bytes()
    out: list[Upload] = []

    def add(key, path, message=None): out.append(Upload(key, Path(path), message))

    add('photo', _save(im, folder / 'bear.jpg', 'JPEG', quality=92))
    (folder / 'notes.jpg').write_text('Shopping list: honey, salmon, berries.\n' * 20)
    add('text_as_jpg', folder / 'notes.jpg', 'is not an image file')
    (folder / 'truncated.jpg').write_bytes(data[: len(data) // 2])
    add('truncated', folder / 'truncated.jpg', 'corrupt or truncated')
    (folder / 'empty.jpg').write_bytes(b'')
    add('empty', folder / 'empty.jpg', 'is empty')
    (folder / 'huge.jpg').write_bytes(b'\xff\xd8\xff\xe0' + os.urandom(MAX_UPLOAD_BYTES + 512 * 1024))
    add('too_large', folder / 'huge.jpg', 'is too large')
    # 400 million pixels in a few kilobytes: a 1-bit PNG of one colour compresses to almost nothing.
    add('bomb', _save(Image.new('1', (20_000, 20_000)), folder / 'bomb.png', 'PNG', optimize=True), 'megapixels')
    rgba = im.convert('RGBA')
    rgba.putalpha(Image.linear_gradient('L').resize(im.size))
    add('rgba', _save(rgba, folder / 'rgba.png', 'PNG'))
    add('grey', _save(im.convert('L'), folder / 'grey.png', 'PNG'))
    grey16 = Image.fromarray(np.asarray(im.convert('L'), np.uint16) * 257)
    assert grey16.mode == 'I;16'
    add('grey16', _save(grey16, folder / 'grey16.png', 'PNG'))
    add('cmyk', _save(im.convert('CMYK'), folder / 'cmyk.jpg', 'JPEG', quality=92))
    frames = [im, im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), Image.new('RGB', im.size, 'white')]
    add('gif', _save(frames[0], folder / 'animated.gif', 'GIF', save_all=True, append_images=frames[1:], duration=200, loop=0))
    add('webp', _save(im, folder / 'bear.webp', 'WEBP', quality=90))
    if HEIF: add('heic', _save(im, folder / 'bear.heic', 'HEIF', quality=90))  # what an iPhone saves
    add('phone', phone_photo(im, folder / 'phone.jpg'))
    # The camera stored the picture turned on its side, with EXIF orientation 6 ("rotate 90° clockwise to view").
    exif = Image.Exif()
    exif[0x0112] = 6
    add('exif_rotated', _save(im.transpose(Image.Transpose.ROTATE_90), folder / 'sideways.jpg', 'JPEG', exif=exif, quality=92))
    html_name = folder / '<img src=x onerror="document.title=1">bear.jpg'
    html_name.write_bytes((folder / 'bear.jpg').read_bytes())
    add('html_name', html_name)
    return {u.key: u for u in out}


def phone_photo(im: Image.Image, path: Path) -> Path:
    "`im` as a phone camera saves it: 3000x4000 pixels with sensor noise, about 16 MB of JPEG."
    big = np.asarray(im.resize((3000, 4000), Image.BICUBIC), np.int16)
    noise = np.random.default_rng(0).normal(0, 8, big.shape).astype(np.int16)
    return _save(Image.fromarray(np.clip(big + noise, 0, 255).astype(np.uint8)), path, 'JPEG', quality=98, subsampling=0)


def upright_reference(inputs: dict[str, Upload]) -> Path:
    "The upright image the EXIF-rotated upload must be classified like: the same pixels, re-encoded the same way."
    ref = inputs['photo'].path.with_name('upright_ref.png')
    if not ref.exists():
        im = Image.open(inputs['exif_rotated'].path)
        im.load()
        from PIL import ImageOps
        ImageOps.exif_transpose(im).save(ref, 'PNG')
    return ref
