"""Config: CLUSTERVM_* variables, their parsing, and the README table kept in sync."""
import dataclasses
import re
from pathlib import Path

import pytest

from clustervm.config import Config, env_name
from clustervm.errors import ConfigError

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_table() -> dict[str, str]:
    rows = {}
    for line in README.read_text().splitlines():
        m = re.match(r"\| (CLUSTERVM_[A-Z_]+) \| (\w+) \| ([^|]*) \|", line)
        if m:
            rows[m.group(1)] = m.group(3).strip()
    return rows


def test_every_field_is_documented_with_its_default():
    rows = readme_table()
    for f in dataclasses.fields(Config):
        name = env_name(f.name)
        assert name in rows, f"{name} missing from the README's configuration table"
        doc = rows[name]
        if isinstance(f.default, bool):
            assert doc == str(int(f.default)), (name, doc)
        elif isinstance(f.default, str):
            assert doc.strip("'") == f.default, (name, doc)
        else:
            assert float(doc) == float(f.default), (name, doc)


def test_from_env_parses_types():
    c = Config.from_env({"CLUSTERVM_HEARTBEAT_S": "3.5", "CLUSTERVM_SLOTS": "2",
                         "CLUSTERVM_PICKLE": "yes", "CLUSTERVM_TRACE": "t.json"})
    assert (c.heartbeat_s, c.slots, c.pickle, c.trace) == (3.5, 2, True, "t.json")
    assert Config.from_env(c.to_env()) == c


@pytest.mark.parametrize("name,value", [("CLUSTERVM_SLOTS", "two"),
                                        ("CLUSTERVM_PICKLE", "maybe"),
                                        ("CLUSTERVM_HEARTBEAT_S", "soon")])
def test_bad_values_name_the_variable_and_the_fix(name, value):
    with pytest.raises(ConfigError) as e:
        Config.from_env({name: value})
    assert name in str(e.value) and "unset it" in str(e.value)
