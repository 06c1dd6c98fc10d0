"""``config/routing.yaml``, ``config/risk.yaml`` and ``config/recon.yaml``: loaded,
versioned, watched.

A version is a digest of the file's bytes, recorded with every decision it made. Workers
look at the files every second; a valid change takes effect on the next payment, a bad
one is refused with file, line and field, and the rules in force stay in force.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable, Generic, TypeVar

from pydantic import BaseModel

from domain.recon import ReconRules
from domain.risk import RiskRules
from domain.routing import RoutingRules
from streams.config import ConfigError, load_yaml
from streams.metrics import CONFIG_RELOADS, CONFIG_VERSION

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


def version_of(text: bytes) -> str:
    return hashlib.sha256(text).hexdigest()[:10]


def _load_versioned(path: Path, model: type[M]) -> M:
    raw = path.read_bytes()
    loaded = load_yaml(path, model)
    return loaded.model_copy(update={"version": version_of(raw)})


def load_routing(config_dir: Path, path: Path | None = None) -> RoutingRules:
    return _load_versioned(path or config_dir / "routing.yaml", RoutingRules)


def load_risk(config_dir: Path, path: Path | None = None) -> RiskRules:
    return _load_versioned(path or config_dir / "risk.yaml", RiskRules)


def load_recon(config_dir: Path, path: Path | None = None) -> ReconRules:
    return _load_versioned(path or config_dir / "recon.yaml", ReconRules)


class Watched(Generic[M]):
    """The rules in force from one file, reloaded when the file changes."""

    def __init__(self, path: Path, loader: Callable[[Path], M]) -> None:
        self.path, self._loader = path, loader
        self.current: M = loader(path)  # a bad file at start is fatal: nothing to keep
        self._stamp = self._stat()
        self._refused: str = ""
        CONFIG_VERSION.labels(file=path.name).info({"version": self.version})
        for result in ("applied", "refused"):  # zeros, not gaps
            CONFIG_RELOADS.labels(file=path.name, result=result)

    @property
    def version(self) -> str:
        return getattr(self.current, "version", "")

    def _stat(self) -> tuple[int, int]:
        try:
            st = self.path.stat()
        except OSError:
            return (0, 0)
        return (st.st_mtime_ns, st.st_size)

    def check(self) -> bool:
        """Reload if the file changed; True if new rules are in force."""
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            loaded = self._loader(self.path)
        except (ConfigError, OSError) as exc:
            if str(exc) != self._refused:
                log.error("refused %s, rules %s stay in force:\n%s", self.path, self.version,
                          exc)
                CONFIG_RELOADS.labels(file=self.path.name, result="refused").inc()
                self._refused = str(exc)
            return False
        self._refused = ""
        if getattr(loaded, "version", "") == self.version:
            return False
        log.warning("%s: rules %s in force (were %s)", self.path.name,
                    getattr(loaded, "version", ""), self.version)
        self.current = loaded
        CONFIG_RELOADS.labels(file=self.path.name, result="applied").inc()
        CONFIG_VERSION.labels(file=self.path.name).info({"version": self.version})
        return True


def watch_routing(config_dir: Path) -> Watched[RoutingRules]:
    return Watched(config_dir / "routing.yaml", lambda p: load_routing(config_dir, p))


def watch_risk(config_dir: Path) -> Watched[RiskRules]:
    return Watched(config_dir / "risk.yaml", lambda p: load_risk(config_dir, p))


def watch_recon(config_dir: Path) -> Watched[ReconRules]:
    return Watched(config_dir / "recon.yaml", lambda p: load_recon(config_dir, p))
