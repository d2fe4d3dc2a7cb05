"""The config loader under arbitrary input: a clear ConfigError naming key paths, never a crash.

Whatever an operator (or a broken deployment tool) writes into the YAML file, `load_config`
either returns settings or raises ConfigError whose every line names a key path and a reason,
so the CLI can print it and exit 2.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from director.config import load_config
from director.errors import ConfigError
from director.render import example_config_path

KEYS = [
    "server",
    "vos",
    "director",
    "sites",
    "ces",
    "queues",
    "ce",
    "kind",
    "url",
    "token_file",
    "concurrency",
    "enabled",
    "MaxTotalPilots",
    "MaxWaitingPilots",
    "PilotsPerCycle",
    "processors",
    "memory_mb",
    "pilot",
    "local",
    "arc",
    "htcondor",
    "backoff",
    "demand",
    "x",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10**12),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(KEYS),
)
values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)
    ),
    max_leaves=25,
)


def _load(document: Any) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(yaml.safe_dump(document))
        try:
            load_config(path, require_token=False)
        except ConfigError as exc:
            lines = str(exc).splitlines()
            assert lines, "a ConfigError must say what is wrong"
            for line in lines:
                assert line.startswith(f"{path}: "), line
                assert line[len(str(path)) + 2 :].strip(), line


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=6))
def test_random_documents_load_or_fail_with_key_paths(document: dict[str, Any]) -> None:
    _load(document)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutations_of_the_example_load_or_fail_with_key_paths(data: st.DataObject) -> None:
    """One value of the real example replaced by junk: still a clean answer."""
    document = yaml.safe_load(example_config_path().read_text())
    node = document
    while isinstance(node, dict) and node:
        key = data.draw(st.sampled_from(sorted(node, key=str)))
        if not isinstance(node[key], dict) or data.draw(st.booleans()):
            node[key] = data.draw(values)
            break
        node = node[key]
    _load(document)


def test_non_mapping_documents_are_config_errors() -> None:
    for document in ([1, 2], "text", 42):
        _load(document)
