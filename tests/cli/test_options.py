"""`fit --set KEY=VALUE`: method options given as text, typed by the method's defaults."""

import pytest
from cmm_cache.cli.options import parse_options

from cmm_cache.errors import CmmError


def test_parse_options_types_values_by_the_methods_defaults():
    got = parse_options("cmm", ["iterations=2000", "use_map=false", "lr=3e-4", "alpha=0.5", "fusion=logit"])
    assert got == {"iterations": 2000, "use_map": False, "lr": 3e-4, "alpha": 0.5, "fusion": "logit"}
    assert parse_options("cmm", ["alpha=none"]) == {"alpha": None}
    for bad, msg in (["iterations=many"], "int"), (["use_map=maybe"], "true/false"), (["nope=1"], "no option"):
        with pytest.raises(CmmError, match=msg):
            parse_options("cmm", bad)
    with pytest.raises(CmmError, match="KEY=VALUE"):
        parse_options("cmm", ["iterations"])
