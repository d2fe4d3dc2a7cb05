"""Rendering from the Jinja2 templates in `templates/` (or an operator's own folder).

Templates are compiled once per renderer and rendered many times: rendering 10,000 wrappers must
take a fraction of a second. `StrictUndefined` turns a missing variable into an error at render
time instead of an empty string in a pilot.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

_PACKAGE_DIR = Path(__file__).resolve().parent


def default_template_dir() -> Path:
    """`templates/` of a source checkout, or the copy a wheel installs as `director/_templates`."""
    for candidate in (_PACKAGE_DIR.parent / "templates", _PACKAGE_DIR / "_templates"):
        if (candidate / "pilot-wrapper.sh.j2").is_file():
            return candidate
    raise FileNotFoundError("site-director templates not found (broken installation?)")


def example_config_path() -> Path:
    """`config.example.yaml` of a source checkout or of an installed wheel."""
    for candidate in (
        _PACKAGE_DIR.parent / "config.example.yaml",
        _PACKAGE_DIR / "_templates" / "config.example.yaml",
    ):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("config.example.yaml not found (broken installation?)")


class TemplateRenderer:
    """Renders named templates; operator folders come first, the packaged ones last."""

    def __init__(self, extra_dirs: Sequence[Path] = ()) -> None:
        search = [str(p) for p in extra_dirs] + [str(default_template_dir())]
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(search),
            undefined=jinja2.StrictUndefined,
            autoescape=False,  # noqa: S701 - shell, submit files and xRSL, not HTML
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def template(self, name: str) -> jinja2.Template:
        """The compiled template; Jinja caches it, so repeated calls cost a dict look-up."""
        return self._env.get_template(name)

    def render(self, name: str, /, **variables: Any) -> str:
        return self.template(name).render(**variables)


@cache
def default_renderer() -> TemplateRenderer:
    return TemplateRenderer()
