import pytest

from notebook_runner import NBS, all_runs, set_workdir


@pytest.fixture(scope='session', autouse=True)
def notebook_workdir(tmp_path_factory):
    "One cache of samples and settings shared by every notebook in the session."
    set_workdir(tmp_path_factory.mktemp('course'))


def pytest_terminal_summary(terminalreporter):
    runs = sorted(all_runs(), key=lambda r: str(r.path))
    if not runs: return
    tr = terminalreporter
    tr.section('notebook times (sample mode, this machine)')
    for r in runs:
        tr.write_line(f"{r.seconds:7.1f} s  {r.path.relative_to(NBS)}{'  FAILED' if r.error else ''}")
    tr.write_line(f"{sum(r.seconds for r in runs):7.1f} s  all notebooks")
