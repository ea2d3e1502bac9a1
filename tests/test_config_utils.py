from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from lofr.config_utils import ConfigError, apply_overrides, from_dict, load_yaml, to_dict


@dataclass
class Optim:
    lr: float = 4e-3
    epochs: int = 10


@dataclass
class Cfg:
    model: Literal["lofr", "baseline"] = "lofr"
    input_size: tuple[int, int] = (256, 192)
    fraction: Optional[float] = None
    optim: Optim = field(default_factory=Optim)


def test_yaml_roundtrip_with_overrides(tmp_path):
    cfg = Cfg()
    d = apply_overrides(to_dict(cfg), ["optim.lr=1e-3", "input_size=[64, 48]", "model=baseline", "fraction=0.1"])
    back = from_dict(Cfg, d)
    assert back == Cfg(model="baseline", input_size=(64, 48), fraction=0.1, optim=Optim(lr=1e-3))
    assert isinstance(back.optim.lr, float) and back.input_size == (64, 48)


def test_int_is_accepted_for_float_but_not_the_reverse():
    assert from_dict(Optim, {"lr": 1}).lr == 1.0
    with pytest.raises(ConfigError, match=r"config.epochs: expected int, got 2.5"):
        from_dict(Optim, {"epochs": 2.5})


def test_unknown_key_and_bad_choice_are_named():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lrr'\]"):
        from_dict(Cfg, apply_overrides(to_dict(Cfg()), ["optim.lrr=1"]))
    with pytest.raises(ConfigError, match=r"config.model: 'detr' is not one of"):
        from_dict(Cfg, {"model": "detr"})
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["lr"])


def test_bad_yaml_file_names_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="c.yaml is not valid YAML"):
        load_yaml(p)


def test_string_keys_keep_yaml_1_1_words_as_text():
    # YAML 1.1 reads `off` as False: `amp=off` must still give the string "off"
    d = apply_overrides({"amp": "auto", "flag": True}, ["amp=off", "flag=off"])
    assert d == {"amp": "off", "flag": False}
    from lofr.engine.config import load_config

    assert load_config("synth-cpu", ["amp=off"]).amp == "off"
