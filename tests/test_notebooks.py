"""Every notebook runs top to bottom in sample mode; the app notebooks explain what to do without a model."""
import json

import pytest

from notebook_runner import NBS, run_notebook

# the apps' notebooks run below, each without a model, as on a fresh runtime
NOTEBOOKS = sorted(str(p.relative_to(NBS)) for p in NBS.rglob('*.ipynb')
                   if '.ipynb_checkpoints' not in p.parts and p.parent.name != 'apps')


@pytest.mark.parametrize('nb', NOTEBOOKS)
def test_notebook_runs(nb):
    run = run_notebook(nb)
    assert run.error is None, f"{nb} failed:\n{run.error[-4000:]}"


@pytest.mark.parametrize('app_nb, name', [('apps/bear_classifier.ipynb', 'bears'), ('apps/cat_or_dog.ipynb', 'pets')])
def test_app_notebook_without_model_explains_how_to_make_one(app_nb, name, tmp_path):
    "Run top to bottom as on a fresh Colab runtime: sample mode, and a FASTAI_HOME of its own that holds no model."
    home = tmp_path / 'fastai_home'
    run = run_notebook(app_nb, fastai_home=home)
    assert run.error is None, run.error
    assert not (home / 'models' / 'apps' / name).exists()
    # what the page shows: the widgets' saved state and the cells' outputs, not the notebook's own code
    shown = json.dumps([run.nb.metadata.get('widgets'), [cell.get('outputs') for cell in run.nb.cells]])
    assert f'course make-model {name}' in shown and 'app-missing-model' in shown
