"""Method options given as text on the command line (``fit --set KEY=VALUE``), typed by the method's defaults.

Parsing is the CLI's job: the library takes typed options (``options={"iterations": 2000}``).
"""

from __future__ import annotations

import json

from cmm_cache.errors import CmmError
from cmm_cache.methods.registry import get_method

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _parse_value(key: str, text: str, default):
    t = text.strip()
    try:
        if isinstance(default, bool):
            if t.lower() not in _TRUE + _FALSE:
                raise ValueError
            return t.lower() in _TRUE
        if isinstance(default, int):
            return int(t)
        if isinstance(default, float):
            return float(t)
        if isinstance(default, (list, dict)):
            return json.loads(t)
        if default is None:
            if t.lower() in ("none", "null", ""):
                return None
            for conv in (int, float):
                try:
                    return conv(t)
                except ValueError:
                    pass
            return t.lower() in _TRUE if t.lower() in _TRUE + _FALSE else t
        return t
    except ValueError:
        kind = "true/false" if isinstance(default, bool) else type(default).__name__
        raise CmmError(f"--set {key}={text}: expected a {kind} (the default is {default!r}).") from None


def parse_options(method: str, pairs) -> dict:
    """``["iterations=2000", "use_map=false"]`` -> typed options of `method` (typed by its defaults)."""

    m = get_method(method)
    out = {}
    for p in pairs or ():
        key, sep, value = str(p).partition("=")
        key = key.strip()
        if not sep or not key:
            raise CmmError(f"--set {p}: expected KEY=VALUE.", f"Options of {m.name}: {', '.join(sorted(m.defaults))}.")
        if key not in m.defaults:
            raise CmmError(
                f"Method '{m.name}' has no option {key!r}.",
                f"Its options: {', '.join(sorted(m.defaults)) or 'none'}.",
            )
        out[key] = _parse_value(key, value, m.defaults[key])
    return out
