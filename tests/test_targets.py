"""Target selection: module types, FQN globs and regexes, exclusions, and loud failures."""

import pytest
import torch.nn as nn

import sparseforge as sf
from sparseforge.targets import select_targets


def keys(ts):
    return [t.key for t in ts]


def test_default_types(convnet):
    assert keys(select_targets(convnet, (nn.Linear, nn.Conv2d))) == ["0.weight", "2.weight", "4.weight", "8.weight"]
    assert keys(select_targets(convnet, (nn.Linear,))) == ["8.weight"]


def test_type_glob_regex(convnet):
    assert keys(select_targets(convnet, (), targets=nn.Conv2d)) == ["0.weight", "2.weight", "4.weight"]
    assert keys(select_targets(convnet, (), targets=["2", "8"])) == ["2.weight", "8.weight"]
    assert keys(select_targets(convnet, (), targets="re:[02]")) == ["0.weight", "2.weight"]


def test_exclude_first_last(convnet):
    ts = select_targets(convnet, (nn.Linear, nn.Conv2d), exclude=[":first", ":last"])
    assert keys(ts) == ["2.weight", "4.weight"]
    ts = select_targets(convnet, (nn.Linear, nn.Conv2d), exclude=[nn.Linear, "4"])
    assert keys(ts) == ["0.weight", "2.weight"]


def test_selector_errors(convnet):
    with pytest.raises(ValueError, match="matched no module"):
        select_targets(convnet, (), targets=["encoder.*"])
    with pytest.raises(ValueError, match="exclude selector 'fc'"):
        select_targets(convnet, (nn.Conv2d,), exclude=["fc"])
    with pytest.raises(ValueError, match="invalid regex"):
        select_targets(convnet, (), targets=["re:(("])
    with pytest.raises(TypeError, match="selector"):
        select_targets(convnet, (), targets=[3])
    with pytest.raises(ValueError, match="no module left"):
        select_targets(convnet, (nn.Linear,), exclude=[":first"])
    with pytest.raises(ValueError, match="only meaningful in exclude"):
        select_targets(convnet, (), targets=[":first"])
    with pytest.raises(TypeError, match="nn.Module"):
        select_targets("not a model", ())


def test_sparsify_respects_exclusions(convnet):
    sf.sparsify(convnet, "magnitude", sparsity=0.5, exclude=[":first", ":last"])
    rep = sf.sparsity_report(convnet)
    assert rep["0"].density == 1.0 and rep["8"].density == 1.0
    assert rep["2"].density == pytest.approx(0.5, abs=1 / rep["2"].numel)
