"""Plugin discovery: lazy, tolerant of broken plugins, strict about name clashes, switchable."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch.nn as nn

import sparseforge as sf
from sparseforge.config import Config, param
from sparseforge.registry import (Method, MethodConflictError, Paper, PluginLoadError, UnknownMethodError,
                                  get_method, register, unregister)


def make_dist(root, dist, entries: dict, modules: dict):
    """Writes a minimal installed distribution (dist-info + modules) under ``root``."""
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entries.items())
    (info / "entry_points.txt").write_text(f"[sparseforge.methods]\n{lines}\n")
    for name, src in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(src))


def run_py(code, path=None, env_extra=None):
    import os

    env = dict(os.environ)
    if path is not None:
        env["PYTHONPATH"] = str(path) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=120)


def test_listing_imports_no_plugin():
    proc = run_py("""
        import sys, sparseforge as sf
        names = sf.list_methods()
        loaded = [m for m in sys.modules if m.startswith("sparseforge_methods.")]
        print(names, loaded)
        assert "magnitude" in names and "random_erk" in names, names
        assert loaded == [], loaded
        sf.describe("magnitude")
        loaded = [m for m in sys.modules if m.startswith("sparseforge_methods.")]
        assert loaded == ["sparseforge_methods.magnitude"], loaded
    """)
    assert proc.returncode == 0, proc.stderr


def test_broken_plugin_is_reported_not_fatal(tmp_path, cli):
    make_dist(tmp_path, "brokenplug", {"broken_method": "brokenplug_mod:Broken"},
              {"brokenplug_mod": "raise ImportError('missing dependency xyz')\n"})
    proc = run_py("""
        import warnings, sparseforge as sf
        from sparseforge.registry import PluginLoadError, plugin_errors
        assert "broken_method" in sf.list_methods()
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            assert "broken_method" not in sf.list_methods(kind="pruning")
        assert any("missing dependency xyz" in str(x.message) for x in w)
        assert "missing dependency xyz" in plugin_errors()["broken_method"]
        try:
            sf.describe("broken_method")
        except PluginLoadError as e:
            assert "brokenplug" in str(e)
        else:
            raise AssertionError("no error")
        print("ok")
    """, path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = cli("list", env={"PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "magnitude" in out.stdout
    assert "broken plugin skipped" in out.stderr and "missing dependency xyz" in out.stderr


def test_plugin_breaking_the_contract_is_reported(tmp_path):
    make_dist(tmp_path, "badcontract", {"bad_kind": "badcontract_mod:Bad"}, {"badcontract_mod": """
        from dataclasses import dataclass
        from sparseforge.registry import Method, Paper
        from sparseforge.config import Config
        @dataclass
        class C(Config):
            pass
        class Bad(Method):
            name = "bad_kind"; paper = Paper("x", 2020); kind = "magic"; Config = C
            def apply(self, model, targets): return model
    """})
    proc = run_py("""
        import sparseforge as sf
        from sparseforge.registry import PluginLoadError
        try:
            sf.describe("bad_kind")
        except PluginLoadError as e:
            assert "kind 'magic'" in str(e), e
            print("ok")
    """, path=tmp_path)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


def test_name_clash_raises(tmp_path, cli):
    make_dist(tmp_path, "clashplug", {"magnitude": "clashplug_mod:Other"}, {"clashplug_mod": "Other = None\n"})
    proc = run_py("""
        import sparseforge as sf
        from sparseforge.registry import MethodConflictError
        try:
            sf.describe("magnitude")
        except MethodConflictError as e:
            assert "clashplug" in str(e) and "sparseforge" in str(e), e
            print("ok")
    """, path=tmp_path)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
    out = cli("info", "magnitude", env={"PYTHONPATH": str(tmp_path)})
    assert out.returncode == 2 and "more than one plugin" in out.stderr


def test_disable_plugins_env(tmp_path):
    make_dist(tmp_path, "brokenplug2", {"broken2": "brokenplug2_mod:X"},
              {"brokenplug2_mod": "raise RuntimeError('boom')\n"})
    proc = run_py("""
        import json, sparseforge as sf
        print(json.dumps(sf.list_methods()))
        print(json.dumps(sf.list_methods(kind="pruning")))
    """, path=tmp_path, env_extra={"SPARSEFORGE_DISABLE_PLUGINS": "broken2, random_erk"})
    assert proc.returncode == 0, proc.stderr
    names, pruning = map(json.loads, proc.stdout.splitlines())
    assert "broken2" not in names and "random_erk" not in names and "magnitude" in names
    assert "boom" not in proc.stderr  # a disabled plugin is never imported


@pytest.fixture
def toy_method():
    from dataclasses import dataclass

    @dataclass
    class ToyConfig(Config):
        scale: float = param(1.0, "multiplier", range=(0, 10))

    class Toy(Method):
        name = "toy_scale"
        paper = Paper("Toy", 2024)
        kind = "analysis"
        Config = ToyConfig

        def apply(self, model, targets):
            for t in targets:
                getattr(t.module, t.param).data.mul_(self.config.scale)
            return model

    register(Toy)
    yield Toy
    unregister("toy_scale")


def test_register_in_process_and_clash(toy_method, mlp):
    assert "toy_scale" in sf.list_methods()
    before = mlp[0].weight.detach().clone()
    sf.sparsify(mlp, "toy_scale", scale=2.0)
    assert (mlp[0].weight == 2 * before).all()
    with pytest.raises(MethodConflictError, match="toy_scale"):
        register(toy_method)

    class Clash(toy_method):
        name = "magnitude"

    with pytest.raises(MethodConflictError, match="magnitude"):
        register(Clash)


def test_unknown_method_suggests():
    with pytest.raises(UnknownMethodError) as exc:
        get_method("randm_erk")
    assert "random_erk" in str(exc.value)


def test_list_methods_kind_filter():
    assert sf.list_methods(kind="pruning") == [n for n in sf.list_methods() if get_method(n).kind == "pruning"]
    assert "random_erk" in sf.list_methods(kind="sparse_training")
    with pytest.raises(ValueError, match="kind must be one of"):
        sf.list_methods(kind="nonsense")


@pytest.mark.parametrize("name", sf.list_methods())
def test_every_method_applies_with_defaults(name):
    """Registry-wide contract: each method runs on a small model with its defaults."""
    cls = get_method(name)
    cls.check_class()
    if not cls.needs_targets:
        pytest.skip(f"{name} acts on whole models; its own tests cover it")
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    out = sf.sparsify(model, name)
    assert isinstance(out, nn.Module)
    assert sf.history(out)[-1]["method"] == name
    import torch

    assert out(torch.randn(2, 16)).shape == (2, 8)
