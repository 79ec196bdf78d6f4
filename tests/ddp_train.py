"""Lesson 1's cats-and-dogs model on the pets sample, trained as one process of `torchrun` (or alone) with fastai's
distributed engine. Writes to OUT/rank-N.json the items each epoch gave this process, the files it read, and its
metrics; reports to the ledger and exports the learner as the lesson would.

    torchrun --standalone --nproc-per-node 2 tests/ddp_train.py stock|fast|cached OUT

`cached` is the fast loaders with their decoded-image cache, decoding in this process (as on a GPU).
"""
import json
import os
import sys
from pathlib import Path

import fastai.vision.core
from fastai.distributed import DistributedDL
from fastai.callback.core import Callback
from fastai.vision.all import ImageDataLoaders, Resize, URLs, error_rate, get_image_files, resnet18, vision_learner

from course_utils.data import course_data
from course_utils.distributed import distrib_kwargs
from course_utils.fastimage.data import FastImageDataLoaders
from course_utils.ledger import report
from course_utils.training import RefreshBatchNormStats

loaders, out = sys.argv[1], Path(sys.argv[2])
rank = int(os.environ.get('RANK', 0))

# Watch fastai's engine, without changing it: what each epoch hands this process, and which image files it reads.
shards, reads = [], []
_get_idxs = DistributedDL.get_idxs
def get_idxs(self):
    idxs = _get_idxs(self)
    shards.append({'split': 'valid' if self.dataset.split_idx == 1 else 'train', 'items': [str(self.dataset.items[i]) for i in idxs]})
    return idxs
DistributedDL.get_idxs = get_idxs
_load_image, _read_bytes = fastai.vision.core.load_image, Path.read_bytes  # fastai's loaders, and the fast ones
def load_image(fn, *args, **kwargs):
    reads.append(str(fn))
    return _load_image(fn, *args, **kwargs)
def read_bytes(self):
    if self.suffix == '.jpg': reads.append(str(self))
    return _read_bytes(self)
fastai.vision.core.load_image, Path.read_bytes = load_image, read_bytes


def is_cat(x): return x[0].isupper()


train_reads = []  # the files each training epoch read
class TrainReads(Callback):
    def before_train(self): self.start = len(reads)
    def after_train(self): train_reads.append(reads[self.start:])


path = course_data(URLs.PETS) / 'images'
files = get_image_files(path)
make = ImageDataLoaders if loaders == 'stock' else FastImageDataLoaders
cache = {'cache_gb': 0.25, 'decode_in_workers': False} if loaders == 'cached' else {}
dls = make.from_name_func(path, files, valid_pct=0.2, seed=42, label_func=is_cat, item_tfms=Resize(48), bs=32, num_workers=0, **cache)
learn = vision_learner(dls, resnet18, metrics=error_rate, pretrained=False, cbs=[RefreshBatchNormStats(), TrainReads()])
reads.clear()  # setting up the loaders read an item of each split to learn their types: not part of training
with learn.distrib_ctx(**distrib_kwargs()):
    learn.fine_tune(1)
reads_in_training = list(reads)
ddp_error = float(learn.recorder.values[-1][-1])  # validated by all processes together, each on its share
error = float(learn.validate()[1])                # the same weights, validated by this process alone on the whole set
report('01_intro', 'error_rate', error)
learn.export(out / f'export-rank{rank}.pkl')
(out / f'rank-{rank}.json').write_text(json.dumps(dict(
    rank=rank, world_size=int(os.environ.get('WORLD_SIZE', 1)), shards=shards, reads=reads_in_training, train_reads=train_reads, ddp_error=ddp_error, error=error,
    train=[str(f) for f in dls.train.items], valid=[str(f) for f in dls.valid.items])))
