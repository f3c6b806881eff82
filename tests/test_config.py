"""Config contract for every registered method: defaults valid, JSON round trip, clear errors."""

import dataclasses
import json

import pytest

import sparseforge as sf
from sparseforge.config import Config, ConfigError, param
from sparseforge.registry import get_method, method_names


@pytest.mark.parametrize("name", method_names())
def test_every_method_config_round_trips(name):
    cls = get_method(name)
    cfg = cls.Config()
    text = cfg.to_json()
    data = json.loads(text)
    assert data["method"] == name and data["version"] == cls.Config.VERSION
    again = cls.Config.from_json(text)
    assert again == cfg
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)


@pytest.mark.parametrize("name", method_names())
def test_every_method_describes_its_fields(name):
    info = sf.describe(name)
    assert info.name == name and info.paper.year >= 1990
    assert all(f["help"] for f in info.fields), "every config field needs help text"
    assert name in str(info)


def test_validation_names_field_and_range():
    with pytest.raises(ConfigError) as exc:
        sf.make_config("magnitude", sparsity=1.5)
    assert exc.value.field == "sparsity" and "[0.0, 1.0)" in str(exc.value)
    with pytest.raises(ConfigError, match="'scope'"):
        sf.make_config("magnitude", scope="everywhere")
    with pytest.raises(ConfigError, match="'sparsity'"):
        sf.make_config("magnitude", sparsity="half")
    with pytest.raises(ConfigError, match="no_such_field"):
        sf.make_config("magnitude", no_such_field=1)
    with pytest.raises(ConfigError, match="'sparsity'"):
        sf.make_config("random_erk", sparsity=True)  # a bool is not a number here


def test_int_is_accepted_for_float_fields():
    cfg = sf.make_config("random_erk", sparsity=0)
    assert cfg.sparsity == 0.0 and isinstance(cfg.sparsity, float)


def test_json_version_and_method_checks():
    cls = get_method("magnitude").Config
    good = json.loads(cls(sparsity=0.3).to_json())
    with pytest.raises(ValueError, match="newer"):
        cls.from_dict({**good, "version": cls.VERSION + 1})
    with pytest.raises(ValueError, match="random_erk"):
        cls.from_dict({**good, "method": "random_erk"})
    with pytest.raises(ConfigError, match="extra"):
        cls.from_dict({**good, "extra": 1})


def test_migration_hook_runs_for_old_versions():
    @dataclasses.dataclass
    class C(Config):
        VERSION = 2
        METHOD = "toy"
        ratio: float = param(0.5, "ratio", range=(0, 1))

        @classmethod
        def migrate(cls, data, version):
            assert version == 1
            return {"ratio": data.pop("percent") / 100}

    assert C.from_dict({"method": "toy", "version": 1, "percent": 25}).ratio == 0.25
