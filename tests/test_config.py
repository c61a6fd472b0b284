"""YAML configs with dotted overrides and strict keys."""

from __future__ import annotations

import pytest
from reference.config_schema import Inner, Outer

from babelora.config import build_dataclass, dump_config, load_config, read_yaml
from babelora.errors import ConfigError


def test_yaml_overrides_and_dump(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: run\nlora:\n  rank: 4\n")
    cfg = load_config(path, Outer, ["lora.alpha=32", "langs=[de, fr]", "flag=true", "note=null"])
    assert cfg == Outer("run", ("de", "fr"), Inner(4, 32.0), True, None)
    dump_config(cfg, tmp_path / "out.yaml")
    assert load_config(tmp_path / "out.yaml", Outer) == cfg
    assert load_config(None, Outer, ["langs=de,fr"]).langs == ("de", "fr")


@pytest.mark.parametrize(
    "data, words",
    [
        ({"lora": {"rnk": 3}}, "unknown config key 'lora.rnk'"),
        ({"lora": {"rank": "big"}}, "lora.rank: expected an integer"),
        ({"flag": "maybe"}, "flag: expected true/false"),
        ({"lora": 3}, "lora: expected a section"),
    ],
)
def test_strict_errors(data, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        build_dataclass(Outer, data)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_yaml(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        read_yaml(tmp_path / "list.yaml")
    (tmp_path / "evil.yaml").write_text("a: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(tmp_path / "evil.yaml")
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, Outer, ["oops"])
