"""Rendering the pilot wrapper: every rendering is valid sh and valid Python 3.6+.

`assert_valid_wrapper` is also used by the process tests in `test_wrapper_run.py`, so every
wrapper a test renders passes `sh -n` and `python3 -m py_compile` on its embedded program.
"""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from director.errors import ConfigError
from director.render import TemplateRenderer
from director.wrapper import (
    PILOT_EXCHANGE_REQUESTS,
    WrapperFile,
    WrapperOptions,
    WrapperRenderer,
    embedded_program,
    pilot_arguments,
    secret_uses,
    wrapper_config,
)

STAMP = "0123456789abcdef0123456789abcdef"
SECRET = "f" * 64


def _real_python3() -> str:
    """The interpreter `python3` resolves to (skipping a pyenv shim's start-up on every call)."""
    found = subprocess.run(
        ["python3", "-c", "import sys; print(sys.executable)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return found.stdout.strip()


PYTHON3 = _real_python3()


def assert_valid_wrapper(text: str, folder: Path) -> None:
    """`sh -n` on the wrapper, `python3 -m py_compile` and a Python 3.6 grammar parse on its
    embedded program."""
    name = uuid.uuid4().hex
    script = folder / f"{name}.sh"
    script.write_text(text)
    program = folder / f"{name}.py"
    source = embedded_program(text)
    program.write_text(source)
    try:
        sh = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert sh.returncode == 0, sh.stderr
        compiled = subprocess.run(
            [PYTHON3, "-m", "py_compile", str(program)], capture_output=True, text=True
        )
        assert compiled.returncode == 0, compiled.stderr
        ast.parse(source, feature_version=(3, 6))  # worker nodes may have EL7/EL8's python3.6
    finally:
        script.unlink()
        program.unlink()
        shutil.rmtree(folder / "__pycache__", ignore_errors=True)


def options(**changes: object) -> WrapperOptions:
    base = WrapperOptions(
        server_url="https://diracx.example.org/",
        vo="lhcb",
        site="LCG.Example.org",
        ce="ce.example.org",
        queue="long",
        pilot_files=(
            WrapperFile("dirac-pilot.py", content=b"print('pilot')\n"),
            WrapperFile("pilot.json", sha512="a" * 128),
        ),
        pilot_locations=("https://files.example.org/pilot", "file:///cvmfs/lhcb.cern.ch/pilot"),
    )
    return WrapperOptions(**{**base.__dict__, **changes})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def renderer() -> WrapperRenderer:
    return WrapperRenderer(TemplateRenderer())


def test_rendered_wrapper_is_valid_sh_and_python(renderer: WrapperRenderer, tmp_path: Path) -> None:
    text = renderer.prepare(options()).render(STAMP, SECRET)
    assert text.startswith("#!/bin/sh\n")
    assert_valid_wrapper(text, tmp_path)


def test_the_embedded_program_has_no_undefined_names_or_lint_errors(
    renderer: WrapperRenderer, tmp_path: Path
) -> None:
    """Error paths run rarely, and on worker nodes: pyflakes-class errors are caught here."""
    program = tmp_path / "program.py"
    program.write_text(embedded_program(renderer.prepare(options()).render(STAMP, SECRET)))
    lint = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--isolated", "--select", "F,B,E9", str(program)],
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout


def test_the_secret_appears_once_and_only_inside_the_program(
    renderer: WrapperRenderer, tmp_path: Path
) -> None:
    text = renderer.prepare(options()).render(STAMP, SECRET)
    assert text.count(SECRET) == 1
    assert SECRET in embedded_program(text)


def test_pilot_arguments_follow_the_dirac_options() -> None:
    args = pilot_arguments(
        options(
            setup="LHCb-Production",
            release="v9.0.1",
            project="LHCb",
            extensions=("LHCb", "LHCbWebDIRAC"),
            wn_vo="lhcb.cern.ch",
            processors=8,
            tags=("MultiProcessor", "GPU"),
            required_tags=("GPU",),
            extra_options=("--debug", "-o", "/Resources/Computing/CEDefaults/Tag=x"),
        )
    )
    # only options the stock pilot's getopt knows (it has no -V any more)
    assert args == [
        "-S", "LHCb-Production", "-r", "v9.0.1", "-l", "LHCb", "-e", "LHCb,LHCbWebDIRAC",
        "-N", "ce.example.org", "-Q", "long", "-n", "LCG.Example.org",
        "--pilotProcessors=8", "--tag=MultiProcessor", "--tag=GPU", "--requiredTag=GPU",
        "--wnVO=lhcb.cern.ch", "--diracx_URL=https://diracx.example.org",
    ]  # fmt: skip
    config = wrapper_config(options(extra_options=("--debug", "-o", "/Resources/x=y")))
    assert config["extra_options"] == ["--debug", "-o", "/Resources/x=y"]


def test_empty_values_are_left_out_and_wn_vo_defaults_to_the_vo() -> None:
    args = pilot_arguments(options(queue="", diracx_url_option=""))
    assert args == ["-N", "ce.example.org", "-n", "LCG.Example.org", "--wnVO=lhcb"]


def test_embedded_files_carry_their_checksum() -> None:
    config = wrapper_config(options())
    pilot, json_file = config["pilot_files"]
    assert pilot["sha512"] == hashlib.sha512(b"print('pilot')\n").hexdigest()
    assert pilot["data"]
    assert json_file == {"name": "pilot.json", "sha512": "a" * 128, "data": ""}


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=st.lists(st.text(min_size=0, max_size=40), min_size=4, max_size=4),
    extra=st.lists(st.text(max_size=30), max_size=4),
)
def test_any_option_value_renders_to_valid_code_and_reads_back_unchanged(
    renderer: WrapperRenderer, tmp_path: Path, values: list[str], extra: list[str]
) -> None:
    """Quotes, backslashes, newlines, heredoc markers, Jinja syntax, non-ASCII: all inert."""
    site, queue, setup, env_value = values
    opts = options(
        site=site or "S",
        queue=queue + "\nSITE_DIRECTOR_PILOT_PY\n",
        setup=setup,
        extra_options=(*extra, "{{ pilot_secret }}", "'''", "\\"),
        environment={"X": env_value},
    )
    text = renderer.prepare(opts).render(STAMP, SECRET)
    assert_valid_wrapper(text, tmp_path)
    program = embedded_program(text)
    line = next(li for li in program.splitlines() if li.startswith("CONFIG = json.loads(r'"))
    config = json.loads(line[len("CONFIG = json.loads(r'") : -2])
    assert config["pilot_arguments"] == pilot_arguments(opts)
    assert config["extra_options"] == list(opts.extra_options)
    assert config["environment"] == {"X": env_value}
    assert text.count(SECRET) == 1


def test_a_ca_bundle_and_options_render(renderer: WrapperRenderer, tmp_path: Path) -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    opts = options(ca_pem=pem, ca_path="$X509_CERT_DIR", token_file_option="--diracxTokenFile")
    assert_valid_wrapper(renderer.prepare(opts).render(STAMP, SECRET), tmp_path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"server_url": "http://diracx.example.org"}, "https"),
        ({"pilot_script": "other.py"}, "pilot_script"),
        ({"pilot_locations": ()}, "pilot_locations"),
        ({"pilot_locations": ("ftp://x",)}, "pilot location"),
        ({"python_commands": ("python3; rm -rf /",)}, "python_commands"),
        ({"token_file_option": "--a b"}, "option name"),
        ({"environment": {"A B": "x"}}, "environment"),
        (
            {
                "pilot_files": (
                    WrapperFile("dirac-pilot.py", content=b""),
                    WrapperFile("../x", content=b""),
                )
            },
            "file name",
        ),
        ({"pilot_files": (WrapperFile("dirac-pilot.py", sha512="xyz"),)}, "sha512"),
        ({"ca_pem": "not a pem"}, "ca_pem"),
    ],
)
def test_bad_options_are_config_errors(
    renderer: WrapperRenderer, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        renderer.prepare(options(**changes))


@pytest.mark.parametrize(
    ("stamp", "secret"),
    [("a" * 33, SECRET), ("a b", SECRET), (STAMP, "x'y"), (STAMP, ""), (STAMP, "a\nb")],
)
def test_stamps_and_secrets_outside_their_alphabet_are_refused(
    renderer: WrapperRenderer, stamp: str, secret: str
) -> None:
    prepared = renderer.prepare(options())
    with pytest.raises(ValueError, match="pilot") as error:
        prepared.render(stamp, secret)
    assert not secret or secret not in str(error.value)


def test_an_operator_template_folder_comes_first(tmp_path: Path) -> None:
    custom = tmp_path / "templates"
    custom.mkdir()
    stock = (TemplateRenderer().template("pilot-wrapper.sh.j2").filename or "").strip()
    text = Path(stock).read_text().replace("umask 077\n", "umask 077\n# site override\n", 1)
    (custom / "pilot-wrapper.sh.j2").write_text(text)
    rendered = WrapperRenderer(TemplateRenderer([custom])).prepare(options()).render(STAMP, SECRET)
    assert "# site override\n" in rendered
    assert_valid_wrapper(rendered, tmp_path)


def test_ten_thousand_renders_are_distinct(renderer: WrapperRenderer) -> None:
    """The throughput figure is in bench/render_wrappers.py; here only the results."""
    prepared = renderer.prepare(options())
    stamps = [f"{i:032x}" for i in range(10_000)]
    digests = {hashlib.sha256(prepared.render(s, SECRET).encode()).digest() for s in stamps}
    assert len(digests) == 10_000  # digests, not 10,000 copies of 30 kB in memory


@pytest.mark.parametrize(
    ("secret_option", "configured", "expected"),
    [
        ("", None, None),  # the wrapper alone: the director's setting as it is
        ("", 3, 3),
        ("--pilotSecret", None, 8 + PILOT_EXCHANGE_REQUESTS),  # bounded: it is in argv
        ("--pilotSecret", 5, 5),  # a smaller setting wins
        ("--pilotSecret", 1000, 8 + PILOT_EXCHANGE_REQUESTS),
    ],
)
def test_secrets_handed_to_the_pilot_have_the_uses_of_both(
    renderer: WrapperRenderer, secret_option: str, configured: int | None, expected: int | None
) -> None:
    opts = options(secret_option=secret_option)
    assert opts.tuning.exchange_attempts == 8
    assert secret_uses(opts, configured) == expected
    assert renderer.prepare(opts).secret_uses(configured) == expected


def test_a_secret_option_is_passed_to_the_program_and_checked(renderer: WrapperRenderer) -> None:
    assert wrapper_config(options(secret_option="--pilotSecret"))["secret_option"] == (
        "--pilotSecret"
    )
    assert wrapper_config(options())["secret_option"] == ""
    with pytest.raises(ConfigError, match="option name"):
        renderer.prepare(options(secret_option="--pilot Secret"))
