"""Schedulers run a worker again and again: ``SimpleScheduler`` (built in) and, with the
``rocketry`` extra, a rocketry-based one. ``get_scheduler_class(name)`` finds one by
``OELEO_SCHEDULER``: a short name, ``package.module:ClassName`` or an entry point in the
group ``oeleo.schedulers``."""

from __future__ import annotations

from typing import Any, Dict

from oeleo.errors import ConfigError, named_setting
from oeleo.schedulers.base import SchedulerBase
from oeleo.schedulers.simple import SimpleScheduler

ENTRY_POINT_GROUP = "oeleo.schedulers"

BUILTIN: Dict[str, str] = {
    "simple": "oeleo.schedulers.simple:SimpleScheduler",
    "watch": "oeleo.schedulers.watch:WatchScheduler",  # needs the watch extra (watchdog)
    "rocketry": "oeleo.schedulers.rocketry:RocketryScheduler",  # needs the rocketry extra
}

__all__ = ["RocketryScheduler", "SchedulerBase", "SimpleScheduler", "get_scheduler_class"]


def __getattr__(name: str) -> Any:
    """``oeleo.schedulers.RocketryScheduler``, imported when first asked for (rocketry is
    imported only when one starts)."""
    if name == "RocketryScheduler":
        from oeleo.schedulers.rocketry import RocketryScheduler

        return RocketryScheduler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_scheduler_class(name: str, where: str = "") -> Any:
    """The scheduler class for ``OELEO_SCHEDULER``; ``where`` (``from --scheduler``, ``from the
    environment``) says in a refusal where the name came from."""
    from oeleo.connectors import _entry_point, load_object

    key = name.strip()
    spec = BUILTIN.get(key.lower()) or (key if ":" in key else _entry_point(ENTRY_POINT_GROUP, key))
    named = named_setting("OELEO_SCHEDULER", name, where)
    if spec is None:
        known = ", ".join(sorted(BUILTIN))
        raise ConfigError(f"{named}: unknown scheduler; expected one of {known}")
    cls = load_object(spec, "OELEO_SCHEDULER")
    if not (isinstance(cls, type) and callable(getattr(cls, "start", None))):
        raise ConfigError(
            f"{named}: {spec} is not a scheduler (a class with a start() method, "
            "such as a subclass of oeleo SchedulerBase)"
        )
    return cls
