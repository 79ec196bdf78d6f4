"""Lesson 1's model trained by fastai's distributed engine (DDP through accelerate) in two CPU processes talking
gloo, with fastai's loaders and with the course's fast ones: each process gets its own share of every epoch and
reads only that, metrics cover the whole validation set, and only the first process writes results and exports.
`course ddp` starts the same training through torchrun itself and reports it once."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from course_utils.ledger import read_results
from notebook_runner import sample_env

SCRIPT = Path(__file__).with_name('ddp_train.py')


def train(tmp_path_factory, loaders: str, processes: int) -> dict:
    "Run `ddp_train.py` in `processes` processes; what each process wrote, and the ledger's rows."
    out = tmp_path_factory.mktemp(f'{loaders}-{processes}')
    env = sample_env(tmp_path_factory.getbasetemp() / 'ddp', dict(os.environ, OMP_NUM_THREADS='1', COURSE_RESULTS=str(out / 'results.jsonl')))
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', str(processes)] if processes > 1 else [sys.executable]
    done = subprocess.run([*cmd, str(SCRIPT), loaders, str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((out / f'rank-{r}.json').read_text()) for r in range(processes)]
    return dict(ranks=ranks, out=out, ledger=read_results(out / 'results.jsonl'))


@pytest.fixture(scope='module')
def one_process(tmp_path_factory): return train(tmp_path_factory, 'stock', 1)


@pytest.fixture(scope='module', params=['stock', 'fast'])
def two_processes(request, tmp_path_factory): return train(tmp_path_factory, request.param, 2)


@pytest.fixture(scope='module')
def two_processes_cached(tmp_path_factory): return train(tmp_path_factory, 'cached', 2)


def test_both_processes_joined_one_group(two_processes):
    assert [r['world_size'] for r in two_processes['ranks']] == [2, 2]


def test_each_epoch_is_shared_without_overlap(two_processes):
    first, second = two_processes['ranks']
    assert len(first['shards']) == len(second['shards']) >= 4  # fine_tune(1): two epochs, a training and a validation pass each
    for a, b in zip(first['shards'], second['shards']):
        assert a['split'] == b['split']
        everything = first[a['split']]
        assert not set(a['items']) & set(b['items'])
        assert sorted(a['items'] + b['items']) == sorted(everything)


def test_each_process_reads_only_its_share(two_processes):
    for r in two_processes['ranks']:
        given = {f for s in r['shards'] for f in s['items']}
        assert r['reads'] and set(r['reads']) <= given


def test_metrics_cover_the_whole_validation_set(two_processes):
    for r in two_processes['ranks']:
        assert r['ddp_error'] == pytest.approx(r['error'], abs=1e-6)


def test_only_the_first_process_reports_and_exports(two_processes):
    assert [(row['lesson'], row['metric']) for row in two_processes['ledger']] == [('01_intro', 'error_rate')]
    assert sorted(p.name for p in two_processes['out'].glob('export-*.pkl')) == ['export-rank0.pkl']


def test_two_processes_learn_as_well_as_one(two_processes, one_process):
    # A third of the pets are cats: always answering "dog" gives an error rate of about 0.32.
    alone, together = one_process['ranks'][0]['error'], two_processes['ranks'][0]['error']
    assert alone < 0.2 and together < 0.2
    assert abs(alone - together) < 0.1


def test_each_process_caches_what_it_decoded(two_processes, two_processes_cached):
    "Without the cache each epoch reads the process's whole share; with it, a second epoch reads only what the first did not."
    for run in (two_processes, two_processes_cached):
        for r in run['ranks']:
            train_shares = [s for s in r['shards'] if s['split'] == 'train']
            (first, second), (share1, share2) = (len(e) for e in r['train_reads']), (s['items'] for s in train_shares)
            if run is two_processes: assert (first, second) == (len(share1), len(share2)), r['rank']
            else:  # it can spare only what this process saw before (most of it: a partial last batch is dropped undecoded)
                assert first <= len(share1), r['rank']  # setting the learner up may have decoded one already
                seen_before = len(set(share1) & set(share2))
                assert len(share2) - seen_before <= second < len(share2) - seen_before * 0.8, (r['rank'], second, seen_before)


def test_course_ddp_trains_lesson_1_in_two_processes_and_reports_once(tmp_path_factory):
    "`course ddp` starts torchrun itself; every process trains, the first prints the ledger line and writes the row."
    out = tmp_path_factory.mktemp('course-ddp')
    env = sample_env(tmp_path_factory.getbasetemp() / 'ddp', dict(os.environ, OMP_NUM_THREADS='1', COURSE_RESULTS=str(out / 'results.jsonl')))
    course = Path(sys.executable).with_name('course')
    done = subprocess.run([str(course), 'ddp', '--procs', '2', '--sample'], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [l for l in done.stdout.splitlines() if l.startswith('01_intro · error_rate')]
    assert len(lines) == 1 and lines[0].endswith('2 processes'), done.stdout
    [row] = read_results(out / 'results.jsonl')
    assert row['value'] < 0.2, row  # always answering "dog" scores about 0.32
