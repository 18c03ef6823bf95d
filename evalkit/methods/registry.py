"""Method registry: name -> implementing class. Adding a method = one subpackage + one line here
(+ its spec in methods/<name>.toml). Imports are lazy so a broken method cannot break the others."""
from __future__ import annotations

import importlib

from evalkit.methods.base import Method

METHODS: dict[str, str] = {
    "4dgs": "evalkit.methods.fourdgs:FourDGS",
    "4dgs-cc": "evalkit.methods.fourdgs_cc:FourDGSCC",
    "adc-gs": "evalkit.methods.adc_gs:ADCGS",
}


class UnknownMethod(Exception):
    pass


def get_method(name: str) -> Method:
    try:
        target = METHODS[name.partition(":")[0]]  # "<name>:<variant>" runs <name> (spec variant)
    except KeyError:
        raise UnknownMethod(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)()


def method_names() -> list[str]:
    return sorted(METHODS)
