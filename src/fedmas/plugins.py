"""Running a user's plugin code (a module named in ``plugins:``, a dataset function) so that its failures are
the user's: an exception, a syntax error, ``sys.exit`` or ``os._exit`` in it becomes :class:`PluginError`
naming the module, never a fedmas crash and never a silent exit 0 with no run."""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any


class PluginError(ValueError):
    """The user's plugin failed (exit 2, one line)."""


class _ExitCalled(BaseException):
    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


NOTICE_S = 10.0  # after this long inside the user's code, say so (FEDMAS_PLUGIN_NOTICE_S overrides it)


@contextlib.contextmanager
def _notice(what: str) -> Iterator[None]:
    """While the user's code runs: if it has not returned after :data:`NOTICE_S` seconds, one line says where
    fedmas is waiting (a plugin that sleeps or blocks on input would otherwise hang without a word)."""
    import sys
    import threading

    delay = float(os.environ.get("FEDMAS_PLUGIN_NOTICE_S", NOTICE_S))
    timer = threading.Timer(delay, lambda: print(f"[fedmas] still waiting for {what} after {delay:g} s (your "
                                                 f"code; Ctrl-C stops it)", file=sys.stderr, flush=True))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


@contextlib.contextmanager
def _no_exit() -> Iterator[None]:
    """While plugin code runs, ``os._exit`` raises instead of ending the process (``sys.exit`` raises already)."""
    real = os._exit

    def refuse(code: int) -> None:  # noqa: ANN001 - os._exit's signature
        raise _ExitCalled(code)

    os._exit = refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        os._exit = real


def _why(e: BaseException) -> str:
    if isinstance(e, _ExitCalled):
        return f"called os._exit({e.code})"
    if isinstance(e, SystemExit):
        return f"called sys.exit({e.code!r})"
    if isinstance(e, KeyboardInterrupt):
        raise e
    if isinstance(e, SyntaxError):
        return f"has a syntax error: {e.msg} ({e.filename}, line {e.lineno})"
    return f"raised {type(e).__name__}: {e}"


def import_plugin(name: str) -> ModuleType:
    """Import the user's module ``name``; :class:`PluginError` naming it when that fails in any way."""
    if not name or any(not part.isidentifier() for part in name.split(".")):
        raise PluginError(f"plugin {name!r} is not a module name (dotted Python identifiers, e.g. my_tasks)")
    try:
        with _no_exit(), _notice(f"plugin module {name!r} to be imported"):
            return importlib.import_module(name)
    except ImportError as e:
        raise PluginError(f"cannot import plugin module {name!r} ({e})") from None
    except BaseException as e:  # noqa: BLE001 - anything the user's module does at import is the user's
        raise PluginError(f"plugin module {name!r} {_why(e)} while being imported") from None


def call_plugin(fn: Callable[..., Any], what: str, *args: Any, passthrough: tuple[type[BaseException], ...] = ()
                ) -> Any:
    """Call the user's ``fn``; :class:`PluginError` naming ``what`` when it raises (other than ``passthrough``,
    errors the function may raise on purpose) or tries to exit."""
    try:
        with _no_exit(), _notice(what):
            return fn(*args)
    except passthrough:
        raise
    except BaseException as e:  # noqa: BLE001 - the user's function failed: say which and how, no traceback
        raise PluginError(f"{what} {_why(e)}") from None
