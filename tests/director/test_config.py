"""Configuration: precedence, the example file, and one line per problem with its key path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from director.config import load_config
from director.errors import ConfigError
from director.render import example_config_path


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


MINIMAL = """
server: {url: "https://server.example:8443", token_file: /etc/site-director/token}
vos: [lhcb]
director: {concurrency: 4}
sites:
  Test.Site.org:
    ces:
      ce1: {ce: {kind: local}, queues: {q1: {}}}
"""


def test_the_example_config_loads_with_its_local_queue_enabled() -> None:
    settings = load_config(example_config_path())
    enabled = [q.key for q in settings.queues() if q.enabled]
    assert enabled == ["DIRAC.Demo.local/localhost/default"]


def test_environment_beats_the_file_and_flags_beat_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, MINIMAL)
    monkeypatch.setenv("SITE_DIRECTOR_DIRECTOR__CONCURRENCY", "7")
    monkeypatch.setenv("SITE_DIRECTOR_SERVER__URL", "https://from-env.example")
    settings = load_config(path)
    assert settings.director.concurrency == 7
    assert str(settings.server.url) == "https://from-env.example/"
    assert str(settings.server.token_file) == "/etc/site-director/token"  # merged, not replaced
    settings = load_config(path, {"director": {"concurrency": 9}})
    assert settings.director.concurrency == 9


def test_queue_inherits_site_vo_and_pilot_options(tmp_path: Path) -> None:
    data = yaml.safe_load(MINIMAL)
    data["vos"] = ["lhcb", "dteam"]
    data["pilot"] = {"setup": "Prod", "extra_options": ["-a"]}
    data["sites"]["Test.Site.org"]["vo"] = "dteam"
    data["sites"]["Test.Site.org"]["ces"]["ce1"]["queues"]["q1"] = {
        "ce_queue": "long",
        "pilot": {"extra_options": ["-b"]},
    }
    [ref] = load_config(write(tmp_path, yaml.safe_dump(data))).queues()
    assert (ref.vo, ref.ce_queue, ref.key) == ("dteam", "long", "Test.Site.org/ce1/q1")
    assert ref.pilot.setup == "Prod"
    assert ref.pilot.extra_options == ["-b"]


def test_every_problem_is_one_line_with_its_key_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
server: {url: "not a url", token_file: /t}
vos: [lhcb]
sites:
  Test.Site.org:
    ces:
      ce1:
        ce: {kind: lokal}
        queues: {q1: {max_total_pilots: -1, max_waitin_pilots: 2}}
      ce2:
        ce: {kind: local, slotz: 3}
        queues: {q1: {}}
""",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    lines = str(caught.value).splitlines()
    assert all(line.startswith(f"{path}: ") for line in lines)
    text = "\n".join(lines)
    assert "server.url:" in text
    assert "sites.Test.Site.org.ces.ce1.ce:" in text or "ces.ce1.ce.kind" in text
    assert "sites.Test.Site.org.ces.ce1.queues.q1.max_total_pilots:" in text
    assert "sites.Test.Site.org.ces.ce1.queues.q1.max_waitin_pilots: Extra inputs" in text
    assert "sites.Test.Site.org.ces.ce2.ce.slotz: Extra inputs" in text
    assert len(lines) == 5


def test_cross_key_problems(tmp_path: Path) -> None:
    data = yaml.safe_load(MINIMAL)
    del data["server"]["token_file"]
    data["sites"]["Test.Site.org"]["vo"] = "atlas"
    data["sites"]["Test.Site.org"]["ces"]["ce1"]["queues"]["q1"] = {
        "max_total_pilots": 1,
        "max_waiting_pilots": 2,
    }
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, yaml.safe_dump(data)))
    text = str(caught.value)
    assert "sites.Test.Site.org.vo: 'atlas' is not one of vos" in text
    assert "queues.q1.max_waiting_pilots: larger than max_total_pilots" in text
    assert "server.token_file: required" in text
    load_config(
        write(
            tmp_path,
            MINIMAL.replace("token_file: /etc/site-director/token", "").replace(", }", "}"),
        ),
        require_token=False,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("server: [", "invalid YAML"),
        ("- a list", "the top level must be a mapping"),
    ],
)
def test_unreadable_files(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, text))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_pilot_files_need_a_checksum_unless_embedded(tmp_path: Path) -> None:
    data = yaml.safe_load(MINIMAL)
    data["pilot"] = {"files": [{"name": "dirac-pilot.py"}]}
    with pytest.raises(ConfigError, match=r"pilot: .*files\.0: sha512 is required"):
        load_config(write(tmp_path, yaml.safe_dump(data)))
    data["pilot"]["manifest"] = "https://dirac.example.org/pilot"  # the sums come from there
    assert load_config(write(tmp_path, yaml.safe_dump(data))).pilot.manifest


def test_the_commented_example_sites_are_valid_once_uncommented(tmp_path: Path) -> None:
    """The HTCondor-CE and ARC blocks an operator copies must load as written."""
    pytest.importorskip("htcondor2")
    lines = example_config_path().read_text().splitlines()
    start = lines.index("  # LCG.Example.org:")
    block = []
    for line in lines[start:]:
        if not line.startswith("  #"):
            break
        block.append("  " + line[len("  # ") :])
    text = "\n".join(lines[:start] + block) + "\n"
    settings = load_config(write(tmp_path, text))
    kinds = {q.key: q.entry.ce.kind for q in settings.queues()}
    assert kinds == {
        "DIRAC.Demo.local/localhost/default": "local",
        "LCG.Example.org/htcondor-ce.example.org/condor": "htcondor",
        "LCG.Example.org/arc-ce.example.org/grid": "arc",
    }


def test_a_missing_backend_module_leaves_the_others_loadable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    from director import ce

    monkeypatch.setitem(sys.modules, "director.ce.arc", None)  # as if arc.py were not there
    backends = ce._load_backends()
    assert "arc" not in backends
    assert "local" in backends


def test_command_line_flags_override_file_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from director.commands.common import settings_from
    from site_director.cli import build_parser

    path = write(tmp_path, MINIMAL)
    monkeypatch.setenv("SITE_DIRECTOR_DIRECTOR__CONCURRENCY", "7")
    args = build_parser().parse_args(
        [
            "once",
            "--config",
            str(path),
            "--concurrency",
            "5",
            "--work-dir",
            str(tmp_path / "w"),
            "--server-url",
            "https://flag.example",
            "--name",
            "host-x",
        ]
    )
    settings = settings_from(args)
    assert settings.director.concurrency == 5
    assert settings.director.work_dir == tmp_path / "w"
    assert str(settings.server.url) == "https://flag.example/"
    assert settings.director.name == "host-x"


SHARED = """
server: {url: "https://server.example:8443", token_file: /etc/site-director/token}
vos: [lhcb, dteam, belle]
sites:
  S:
%s
"""


@pytest.mark.parametrize(
    ("site", "expected"),
    [
        pytest.param(  # one VO: the key without a VO, as before
            "    ces: {ce: {ce: {kind: local}, queues: {q: {}}}}",
            [("S/ce/q", "lhcb", 10, 5, 5)],
            id="site-default",
        ),
        pytest.param(
            "    vos: [dteam, lhcb]\n    ces: {ce: {ce: {kind: local}, queues: {q: {}}}}",
            [("dteam/S/ce/q", "dteam", 10, 5, 5), ("lhcb/S/ce/q", "lhcb", 10, 5, 5)],
            id="site-vos",
        ),
        pytest.param(
            "    vo: dteam\n"
            "    ces: {ce: {vos: [lhcb, belle], ce: {kind: local}, queues: {q: {}}}}",
            [("lhcb/S/ce/q", "lhcb", 10, 5, 5), ("belle/S/ce/q", "belle", 10, 5, 5)],
            id="ce-vos-beat-site-vo",
        ),
        pytest.param(
            "    ces: {ce: {vos: [lhcb, belle], ce: {kind: local}, queues: {q: {vos: [dteam]}}}}",
            [("S/ce/q", "dteam", 10, 5, 5)],
            id="queue-vos-beat-ce-vos",
        ),
        pytest.param(
            "    ces: {ce: {ce: {kind: local}, queues: {q: {vos: [lhcb, dteam, lhcb],"
            " max_total_pilots: 8, per_vo: {dteam: {max_total_pilots: 2, max_waiting_pilots: 1,"
            " pilots_per_cycle: 1}}}}}}",
            [("lhcb/S/ce/q", "lhcb", 8, 5, 5), ("dteam/S/ce/q", "dteam", 2, 1, 1)],
            id="per-vo-overrides-duplicates-dropped",
        ),
    ],
)
def test_a_queue_serving_several_vos_is_one_entry_per_vo(
    tmp_path: Path, site: str, expected: list[tuple[str, str, int, int, int]]
) -> None:
    settings = load_config(write(tmp_path, SHARED % site))
    entries = [
        (
            ref.key,
            ref.vo,
            ref.config.max_total_pilots,
            ref.config.max_waiting_pilots,
            ref.config.pilots_per_cycle,
        )
        for ref in settings.queues()
    ]
    assert entries == expected
    assert {ref.ce_queue for ref in settings.queues()} == {"q"}


def test_shared_queue_per_vo_overrides_and_demand_keys(tmp_path: Path) -> None:
    site = (
        "    ces: {ce: {ce: {kind: local}, queues: {q: {vos: [lhcb, dteam], job_types: [User],"
        " per_vo: {dteam: {owner_group: dteam_user, job_types: [MCSimulation]}}}}}}"
    )
    lhcb, dteam = load_config(write(tmp_path, SHARED % site)).queues()
    assert (lhcb.config.owner_group, lhcb.config.job_types) == (None, ["User"])
    assert (dteam.config.owner_group, dteam.config.job_types) == ("dteam_user", ["MCSimulation"])
    assert lhcb.vos == dteam.vos == ("lhcb", "dteam")


@pytest.mark.parametrize(
    ("free", "shares"), [(0, (0, 0, 0)), (7, (3, 2, 2)), (9, (3, 3, 3)), (2, (1, 1, 0))]
)
def test_the_ces_free_slots_are_shared_by_the_vos_of_its_queue(
    tmp_path: Path, free: int, shares: tuple[int, ...]
) -> None:
    site = "    ces: {ce: {ce: {kind: local}, queues: {q: {vos: [lhcb, dteam, belle]}}}}"
    refs = list(load_config(write(tmp_path, SHARED % site)).queues())
    assert tuple(ref.share(free) for ref in refs) == shares


@pytest.mark.parametrize(
    ("site", "problem"),
    [
        (
            "    vos: [lhcb, cms]\n    ces: {ce: {ce: {kind: local}, queues: {q: {}}}}",
            "sites.S.vos: 'cms' is not one of vos",
        ),
        (
            "    vo: lhcb\n    vos: [lhcb]\n    ces: {ce: {ce: {kind: local}, queues: {q: {}}}}",
            "sites.S.vos: give vo or vos, not both",
        ),
        (
            "    ces: {ce: {vos: [], ce: {kind: local}, queues: {q: {}}}}",
            "sites.S.ces.ce.vos: at least one VO",
        ),
        (
            "    ces: {ce: {ce: {kind: local}, queues: {q: {vos: [lhcb], per_vo: {dteam: {}}}}}}",
            "sites.S.ces.ce.queues.q.per_vo.dteam: the queue does not serve 'dteam'",
        ),
        (
            "    ces: {ce: {ce: {kind: local}, queues: {q: {vos: [lhcb, dteam],"
            " per_vo: {dteam: {max_waiting_pilots: 20}}}}}}",
            "sites.S.ces.ce.queues.q.per_vo.dteam.max_waiting_pilots: larger than max_total",
        ),
    ],
)
def test_a_queues_vos_are_checked(tmp_path: Path, site: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, SHARED % site))
    assert problem in str(caught.value)


def test_queues_and_ces_configured_alike_share_one_model(tmp_path: Path) -> None:
    """`director.sharing`: equal models are one object; a difference in a value, or in which
    fields were set (what `exclude_unset` dumps), keeps them apart."""
    data = yaml.safe_load(MINIMAL)
    data["sites"]["Test.Site.org"]["ces"] = {
        "ce1": {"ce": {"kind": "local"}, "queues": {"a": {}, "b": {}, "c": {"processors": 2}}},
        "ce2": {"ce": {"kind": "local"}, "queues": {"a": {}, "d": {"processors": 1}}},
        "ce3": {"ce": {"kind": "local", "slots": 9}, "queues": {"a": {}}},
    }
    settings = load_config(write(tmp_path, yaml.safe_dump(data)))
    ces = settings.sites["Test.Site.org"].ces
    assert ces["ce1"].queues["a"] is ces["ce1"].queues["b"] is ces["ce2"].queues["a"]
    assert ces["ce1"].queues["c"] is not ces["ce1"].queues["a"]
    assert ces["ce2"].queues["d"] is not ces["ce1"].queues["a"]  # processors set, to its default
    assert ces["ce1"].ce is ces["ce2"].ce
    assert ces["ce3"].ce is not ces["ce1"].ce
    assert [ref.key for ref in settings.queues()] == [
        "Test.Site.org/ce1/a", "Test.Site.org/ce1/b", "Test.Site.org/ce1/c",
        "Test.Site.org/ce2/a", "Test.Site.org/ce2/d", "Test.Site.org/ce3/a",
    ]  # fmt: skip
