"""Import hook that makes ``anomalib``'s CLI see the ``Sir`` model without importing it at start-up.

A ``.pth`` file installed next to this module runs ``anomalib_sir_hook.install()`` when Python starts.
That only registers a tiny finder on :data:`sys.meta_path`; nothing heavy is imported. When (and only
when) some code imports ``anomalib.models``, the finder lets the real module load and then imports
:mod:`anomalib_sir`, so ``Sir`` becomes an ``AnomalibModule`` subclass that jsonargparse can resolve
for ``anomalib train --model Sir``. Any failure in the plugin is reported as a warning and never
breaks anomalib itself.

Two pieces of start-up noise are handled at the same points, narrowly:

* While ``anomalib.models`` (and the plugin) are imported, the two deprecation notices that anomalib's
  own imports trigger on every command are ignored: timm's ``Importing from timm.models.layers is
  deprecated`` and anomalib's ``The anomalib.models.components.dinov2 package is deprecated``
  (:data:`IMPORT_WARNINGS`; message-specific filters, active only during that import).
* ``anomalib.loggers.configure_logger`` (called by ``anomalib``'s CLI) adds a Rich handler next to the plain
  one ``logging.basicConfig`` creates, so every log line was printed twice; after it runs, the Rich
  handlers it added are removed wherever a plain console handler already receives the same records, so
  each line appears once (in the plain ``time - logger - level - message`` format, one line per record),
  and the ONNX graph-pass loggers (:data:`CHATTY_LOGGERS`) stay at WARNING.

* A bad plugin argument (``anomalib train --model Sir --model.image_size "[0,0]"``) is raised by jsonargparse
  as a union error inside a long Rich traceback; ``AnomalibCLI.instantiate_classes`` is wrapped so that
  such an error from an ``anomalib_sir`` class is printed as one line (the plugin's own message) with exit
  status 2 (:func:`plugin_argument_error`). Every other error is raised unchanged. ``anomalib export``
  rebuilds the model from the checkpoint's own arguments; ``--model.*`` flags that differ from them are
  refused in one line (``Sir.refuse_other_arguments``) instead of being ignored silently.

Set ``ANOMALIB_SIR_DISABLE_HOOK=1`` to switch the hook off.

Example:
    >>> import anomalib_sir_hook
    >>> anomalib_sir_hook.install()  # idempotent: at most one finder, removed once both modules loaded
    >>> sum(isinstance(f, anomalib_sir_hook.AnomalibModelsFinder) for f in __import__("sys").meta_path) <= 1
    True

"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import logging

TARGET_MODULE = "anomalib.models"
LOGGERS_MODULE = "anomalib.loggers"
CLI_MODULE = "anomalib.cli.cli"
PLUGIN_MODULE = "anomalib_sir.models"

#: Loggers that log every graph pass at INFO while exporting to ONNX (hundreds of lines per export);
#: when anomalib's CLI sets INFO for everything, they are kept at WARNING unless given a level already.
CHATTY_LOGGERS: tuple[str, ...] = ("onnx_ir", "onnxscript")

#: ``(message regex, category)`` of third-party import-time notices silenced while anomalib.models loads.
IMPORT_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    (r"Importing from timm\.models\.layers is deprecated", FutureWarning),
    (r"The anomalib\.models\.components\.dinov2 package is deprecated", FutureWarning),
)


def _import_plugin() -> None:
    try:
        __import__(PLUGIN_MODULE)
    except Exception as exc:
        warnings.warn(f"anomalib-sir plugin failed to load and is disabled: {exc!r}", stacklevel=3)


class _ChainedLoader(importlib.abc.Loader):
    """Run the original loader (known import-time notices ignored), then ``after(module)``."""

    def __init__(self, loader: importlib.abc.Loader, after: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._after = after

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with warnings.catch_warnings():
            for message, category in IMPORT_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            self._loader.exec_module(module)
            self._after(module)


def _console_handlers_reached(logger: logging.Logger) -> list[logging.Handler]:
    """Plain console (stream, not file) handlers that records of ``logger`` reach."""
    import logging

    handlers: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        handlers.extend(
            h
            for h in current.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
        )
        current = current.parent if current.propagate else None
    return handlers


def _drop_duplicate_rich_handlers(logger: logging.Logger, added: list[logging.Handler]) -> None:
    """Remove the handlers in ``added`` that are Rich handlers when a plain console handler is reached too."""
    rich = [h for h in added if type(h).__name__ == "RichHandler"]
    if rich and _console_handlers_reached(logger):
        for handler in rich:
            logger.removeHandler(handler)


def quiet_chatty_loggers() -> None:
    """Set the :data:`CHATTY_LOGGERS` that have no level of their own to WARNING."""
    import logging

    for name in CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


def _single_console_output(configure: Callable[..., None]) -> Callable[..., None]:
    """Wrap anomalib's ``configure_logger`` so that each log record is printed once."""
    import functools
    import logging

    if getattr(configure, "_anomalib_sir_wrapped", False):
        return configure

    @functools.wraps(configure)
    def configure_logger(*args, **kwargs) -> None:
        loggers = [logging.getLogger(), logging.getLogger("lightning.pytorch")]
        before = [list(logger.handlers) for logger in loggers]
        configure(*args, **kwargs)
        for logger, previous in zip(loggers, before, strict=True):
            _drop_duplicate_rich_handlers(logger, [h for h in logger.handlers if h not in previous])
        quiet_chatty_loggers()

    configure_logger._anomalib_sir_wrapped = True  # type: ignore[attr-defined]
    return configure_logger


def _patch_loggers(module: ModuleType) -> None:
    configure = getattr(module, "configure_logger", None)
    if callable(configure):
        module.configure_logger = _single_console_output(configure)  # type: ignore[attr-defined]


def plugin_argument_error(error: BaseException) -> str | None:
    r"""Return the one-line message of a bad ``anomalib_sir`` class argument in a jsonargparse union error.

    Example:
        >>> text = "Does not validate against any of the Union subtypes\nErrors:\n  - Expected a <class 'NoneType'>"
        >>> text += "\n  - image_size must be positive\nGiven value: Namespace(class_path='anomalib_sir.Sir', x=1)"
        >>> plugin_argument_error(ValueError(text))
        'Sir: image_size must be positive'
        >>> plugin_argument_error(ValueError("something else")) is None
        True

    """
    import re

    for exc in (error, error.__cause__, error.__context__):
        text = str(exc) if exc is not None else ""
        owner = re.search(r"class_path='anomalib_sir\.(?:\w+\.)*(\w+)'", text)
        if owner is None or "Errors:" not in text:
            continue
        reasons = [
            line.strip()[2:] for line in text.split("Errors:", 1)[1].splitlines() if line.strip().startswith("- ")
        ]
        reasons = [r for r in reasons if not r.startswith("Expected a <class")]
        if reasons:
            return f"{owner.group(1)}: {reasons[0]}"
    return None


def _one_line_plugin_errors(instantiate: Callable[..., object]) -> Callable[..., object]:
    import functools

    if getattr(instantiate, "_anomalib_sir_wrapped", False):
        return instantiate

    @functools.wraps(instantiate)
    def instantiate_classes(self, *args, **kwargs) -> object:
        try:
            result = instantiate(self, *args, **kwargs)
        except Exception as error:
            message = plugin_argument_error(error)
            if message is None:
                raise
            sys.stderr.write(f"anomalib: error: {message}\n")
            raise SystemExit(2) from None
        _refuse_export_with_other_arguments(self)
        return result

    instantiate_classes._anomalib_sir_wrapped = True  # type: ignore[attr-defined]
    return instantiate_classes


def _refuse_export_with_other_arguments(cli: object) -> None:
    """``anomalib export`` rebuilds the model from the checkpoint: refuse ``--model.*`` flags that differ."""
    refuse = getattr(getattr(cli, "model", None), "refuse_other_arguments", None)
    if refuse is None or getattr(cli, "subcommand", None) != "export":
        return
    try:
        ckpt_path = cli.config["export"]["ckpt_path"]  # type: ignore[attr-defined]
    except (KeyError, TypeError):
        return
    if not ckpt_path:
        return
    from anomalib_sir.deploy.checkpoint import inspect_checkpoint
    from anomalib_sir.deploy.errors import CheckpointError

    try:
        saved = inspect_checkpoint(ckpt_path).hyper_parameters
    except CheckpointError:
        return  # not a readable checkpoint: anomalib's own loading reports it
    try:
        refuse(saved)
    except ValueError as error:
        sys.stderr.write(f"anomalib: error: {error}\n")
        raise SystemExit(2) from None


def _patch_cli(module: ModuleType) -> None:
    cli = getattr(module, "AnomalibCLI", None)
    if cli is not None and callable(getattr(cli, "instantiate_classes", None)):
        cli.instantiate_classes = _one_line_plugin_errors(cli.instantiate_classes)


#: What to run after each intercepted module has loaded.
_AFTER: dict[str, Callable[[ModuleType], None]] = {
    TARGET_MODULE: lambda module: _import_plugin(),
    LOGGERS_MODULE: _patch_loggers,
    CLI_MODULE: _patch_cli,
}


class AnomalibModelsFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder that wraps the loaders of ``anomalib.models`` and ``anomalib.loggers`` once each."""

    def __init__(self) -> None:
        self.pending = set(_AFTER)

    def find_spec(self, fullname: str, path=None, target=None):
        """Wrap the loader of an intercepted module; decline every other module."""
        if fullname not in self.pending:
            return None
        # One shot per module: find the real spec with the path finder, then forget the module.
        self.pending.discard(fullname)
        if not self.pending:
            _remove_finder()
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _ChainedLoader(spec.loader, _AFTER[fullname])
        return spec


def _remove_finder() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, AnomalibModelsFinder)]


def install() -> None:
    """Register the one-shot finder (no-op if disabled or already installed; patches what is already loaded)."""
    if os.environ.get("ANOMALIB_SIR_DISABLE_HOOK"):
        return
    if any(isinstance(f, AnomalibModelsFinder) for f in sys.meta_path):
        return
    finder = AnomalibModelsFinder()
    if LOGGERS_MODULE in sys.modules:
        finder.pending.discard(LOGGERS_MODULE)
        _patch_loggers(sys.modules[LOGGERS_MODULE])
    if TARGET_MODULE in sys.modules:
        finder.pending.discard(TARGET_MODULE)
        _import_plugin()
    if CLI_MODULE in sys.modules:
        finder.pending.discard(CLI_MODULE)
        _patch_cli(sys.modules[CLI_MODULE])
    if finder.pending:
        sys.meta_path.insert(0, finder)
