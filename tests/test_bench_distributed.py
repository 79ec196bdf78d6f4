"""The multi-process benchmark in its quick mode, as a user starts it: one CPU process, then two, each training
lesson 1's model on the sample through torchrun; both learn, and the table has what the bench promises."""
import json
import subprocess
import sys
from pathlib import Path

from notebook_runner import sample_env

BENCH = Path(__file__).resolve().parents[1] / 'bench' / 'bench_distributed.py'


def test_quick_run_on_one_and_two_cpu_processes(tmp_path):
    env = sample_env(tmp_path / 'work')
    done = subprocess.run([sys.executable, str(BENCH), '--quick', '--procs', '1,2', '--out', str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    rows = {r['procs']: r for r in json.loads((tmp_path / 'bench_distributed.json').read_text())['rows']}
    assert sorted(rows) == [1, 2]
    assert rows[1]['images'] == rows[2]['images'] > 0, rows  # two processes count the whole epoch, not one share
    for r in rows.values():
        assert r['seconds'] > 0 and r['error_rate'] < 0.2, r  # always answering "dog" scores about 0.32
    table = (tmp_path / 'bench_distributed.md').read_text()
    assert '| 2 |' in table and 'scaling efficiency' in table, table
