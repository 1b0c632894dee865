"""The shipped default model: it matches the default feature config, it was made by the
documented recipe, and the recipe is reproducible (retrained here on a small budget)."""
from dataclasses import asdict

import numpy as np
import pytest

from obstacle_classifier import default_model, paths
from obstacle_classifier.features import load_default_config
from obstacle_classifier.model import ObstacleModel
from obstacle_classifier.simulation import CLASS_NAMES


@pytest.fixture(scope='module')
def shipped():
    return ObstacleModel.load(paths.config_path('default_model.npz'))


def test_shipped_model_matches_the_default_feature_config(shipped):
    shipped.check_features(load_default_config().feature_names)
    assert shipped.class_names == CLASS_NAMES


def test_shipped_model_was_made_by_the_documented_recipe(shipped):
    meta = shipped.metadata
    assert meta['recipe'] == 'obstacle_classifier.default_model'
    assert meta['budget'] == asdict(default_model.FULL)
    expected = {**asdict(default_model.CONFIG), 'epochs': default_model.FULL.epochs}
    assert meta['train_config'] == expected
    held_out = meta['held_out']
    assert held_out['n_samples'] == default_model.FULL.test_ticks
    assert 0 < held_out['micro']['f1'] <= 1 and 0 < held_out['macro']['f1'] <= 1


def test_recipe_is_reproducible_to_the_byte_on_a_small_budget(tmp_path):
    paths_written = []
    for name in ('a.npz', 'b.npz'):
        model, report = default_model.build(default_model.SMALL, log=lambda *_: None)
        model.save(tmp_path / name)
        paths_written.append(tmp_path / name)
    assert paths_written[0].read_bytes() == paths_written[1].read_bytes()
    again = ObstacleModel.load(paths_written[0])
    assert again.metadata['budget'] == asdict(default_model.SMALL)
    assert np.all((again.thresholds > 0) & (again.thresholds < 1))
    assert report['n_samples'] == default_model.SMALL.test_ticks
