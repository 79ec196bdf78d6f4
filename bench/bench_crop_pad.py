"""fastai's PIL `crop_pad` pads by zero pixels whenever a crop box touches an edge; skipping that is bit-exact.

Times `Resize(224)` (each method, validation: centre crop) on 40 random photo-sized images, stock and with
`course_utils.fastimage.resize.skip_zero_padding()`, checks the outputs are identical, and prints the ratio.
Decoding is not included: this is the transform alone, one process, best of three.

    .venv/bin/python bench/bench_crop_pad.py
"""
import numpy as np
from fastai.vision.all import PILImage, Resize

from benchlib import call_times, ratio
from course_utils.fastimage.resize import skip_zero_padding

rng = np.random.default_rng(0)
imgs = [PILImage.create(np.clip(rng.normal(128, 40, (int(h), int(w), 3)), 0, 255).astype(np.uint8))
        for w, h in rng.integers(300, 800, (40, 2))]

def run(tfm, reps=3):
    "Best seconds per image of `tfm` over all the images, and its outputs."
    out = []
    def convert(): out[:] = [np.asarray(tfm(im, split_idx=1)) for im in imgs]
    return min(call_times(convert, reps)) / len(imgs), out

for method in ('crop', 'squish', 'pad'):
    tfm = Resize(224, method)
    t_stock, a = run(tfm)
    skip_zero_padding()
    try: t_fix, b = run(tfm)
    finally: skip_zero_padding(False)
    same = all(np.array_equal(x, y) for x, y in zip(a, b))
    print(f"{method:6s} stock {t_stock * 1e3:5.2f} ms/img   fixed {t_fix * 1e3:5.2f} ms/img   {ratio(t_stock, t_fix):.2f}x   bit-exact: {same}")
