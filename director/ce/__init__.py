"""The CE kind -> backend registry, and the config union built from it.

Each backend module declares a `<Kind>CEConfig` (with `kind: Literal["<kind>"]`) and a class
implementing `director.ce.base.ComputingElement`. The local CE is always here; the ARC and
HTCondor backends are imported when their modules (and their optional dependencies) import
cleanly, so a host without the htcondor bindings still loads a config that uses only ARC or
local CEs. A config naming a kind that is not available is reported at load time with its key
path, like any other typo.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from director.ce.base import ComputingElement
from director.ce.credentials import CredentialSource
from director.ce.local import LocalCE, LocalCEConfig
from director.render import TemplateRenderer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backend:
    kind: str
    config_class: type[BaseModel]
    ce_class: type[ComputingElement]


#: Optional backends: (module, config class name, CE class name).
_OPTIONAL: tuple[tuple[str, str, str], ...] = (
    ("director.ce.arc", "ARCCEConfig", "ARCCE"),
    ("director.ce.htcondor", "HTCondorCEConfig", "HTCondorCE"),
)

#: Modules whose absence only means "this backend is not available here".
_OPTIONAL_DEPENDENCIES = frozenset({"htcondor2", "classad2", "htcondor", "classad"})


def _load_backends() -> dict[str, Backend]:
    found = {"local": Backend("local", LocalCEConfig, LocalCE)}
    for module_name, config_name, class_name in _OPTIONAL:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            missing = getattr(exc, "name", None)
            if missing != module_name and missing not in _OPTIONAL_DEPENDENCIES:
                raise
            log.debug("CE backend %s not available: %s", module_name, exc)
            continue
        config_class = getattr(module, config_name, None)
        ce_class = getattr(module, class_name, None)
        if config_class is not None and ce_class is None:
            kind = config_class.model_fields["kind"].default
            ce_class = next(
                (
                    value
                    for value in vars(module).values()
                    if isinstance(value, type)
                    and issubclass(value, ComputingElement)
                    and value is not ComputingElement
                    and getattr(value, "kind", None) == kind
                ),
                None,
            )
        if config_class is None or ce_class is None:
            log.debug("CE backend %s lacks %s or %s", module_name, config_name, class_name)
            continue
        kind = config_class.model_fields["kind"].default
        found[str(kind)] = Backend(str(kind), config_class, ce_class)
    return found


BACKENDS: dict[str, Backend] = _load_backends()


def config_union() -> Any:
    """The type of a queue's `ce` block: a union keyed on `kind` over the available backends."""
    from typing import Annotated, Union

    from pydantic import Field

    classes = tuple(b.config_class for b in BACKENDS.values())
    if len(classes) == 1:
        return classes[0]
    return Annotated[Union[classes], Field(discriminator="kind")]  # noqa: UP007


def make_ce(
    config: BaseModel,
    *,
    renderer: TemplateRenderer,
    work_dir: Path,
    credentials: CredentialSource | None = None,
) -> ComputingElement:
    """A CE instance for one config block (the construction contract of `director.ce.base`)."""
    kind = str(getattr(config, "kind", ""))
    try:
        backend = BACKENDS[kind]
    except KeyError:
        raise ValueError(f"no CE backend for kind {kind!r}") from None
    return backend.ce_class(config, renderer=renderer, work_dir=work_dir, credentials=credentials)
