"""Import hook that makes ``anomalib``'s CLI see the ``Sir`` model without importing it at start-up.

A ``.pth`` file installed next to this module runs ``anomalib_sir_hook.install()`` when Python starts.
That only registers a tiny finder on :data:`sys.meta_path`; nothing heavy is imported. When (and only
when) some code imports ``anomalib.models``, the finder lets the real module load and then imports
:mod:`anomalib_sir`, so ``Sir`` becomes an ``AnomalibModule`` subclass that jsonargparse can resolve
for ``anomalib train --model Sir``. Any failure in the plugin is reported as a warning and never
breaks anomalib itself.

Set ``ANOMALIB_SIR_DISABLE_HOOK=1`` to switch the hook off.

Example:
    >>> import anomalib_sir_hook
    >>> anomalib_sir_hook.install()  # idempotent
    >>> any(isinstance(f, anomalib_sir_hook.AnomalibModelsFinder) for f in __import__("sys").meta_path)
    True

"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import warnings
from types import ModuleType

TARGET_MODULE = "anomalib.models"
PLUGIN_MODULE = "anomalib_sir.models"


class _ChainedLoader(importlib.abc.Loader):
    """Run the original loader, then import the plugin (best effort)."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        try:
            __import__(PLUGIN_MODULE)
        except Exception as exc:
            warnings.warn(f"anomalib-sir plugin failed to load and is disabled: {exc!r}", stacklevel=2)


class AnomalibModelsFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder that wraps the loader of ``anomalib.models`` once."""

    def find_spec(self, fullname: str, path=None, target=None):
        """Wrap the loader of ``anomalib.models``; decline every other module."""
        if fullname != TARGET_MODULE:
            return None
        # Find the real spec with the remaining finders, then remove ourselves: one shot.
        _remove_finder()
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _ChainedLoader(spec.loader)
        return spec


def _remove_finder() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, AnomalibModelsFinder)]


def install() -> None:
    """Register the one-shot finder (no-op if disabled, already installed or anomalib already loaded)."""
    if os.environ.get("ANOMALIB_SIR_DISABLE_HOOK"):
        return
    if TARGET_MODULE in sys.modules:
        try:
            __import__(PLUGIN_MODULE)
        except Exception as exc:
            warnings.warn(f"anomalib-sir plugin failed to load and is disabled: {exc!r}", stacklevel=2)
        return
    if not any(isinstance(f, AnomalibModelsFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, AnomalibModelsFinder())
