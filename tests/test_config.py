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


@pytest.mark.parametrize("name,value,rule", [("CLUSTERVM_HEARTBEAT_S", "0", "above 0"),
                                             ("CLUSTERVM_HEARTBEAT_S", "nan", "above 0"),
                                             ("CLUSTERVM_SLOTS", "0", "above 0"),
                                             ("CLUSTERVM_PROBE_TIMEOUT_S", "-1", "above 0"),
                                             ("CLUSTERVM_SPIN_MS", "-0.5", "0 or more"),
                                             ("CLUSTERVM_SPARES", "-1", "0 or more")])
def test_numbers_out_of_range_name_the_variable_and_the_rule(name, value, rule):
    with pytest.raises(ConfigError) as e:
        Config.from_env({name: value})
    assert name in str(e.value) and f"must be {rule}" in str(e.value), str(e.value)


def test_zero_is_a_setting_where_the_docs_give_it_a_meaning():
    c = Config.from_env({"CLUSTERVM_INIT_TIMEOUT_S": "0", "CLUSTERVM_CHECKPOINT_DISK_S": "0",
                         "CLUSTERVM_CHECKPOINT_SYNC_S": "0", "CLUSTERVM_SPIN_MS": "0",
                         "CLUSTERVM_SPARES": "0", "CLUSTERVM_PREFETCH": "0"})
    assert (c.init_timeout_s, c.checkpoint_sync_s, c.spin_ms) == (0.0, 0.0, 0.0)
