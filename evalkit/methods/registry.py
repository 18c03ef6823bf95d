"""Method registry: name -> implementing class. Adding a method = one subpackage + one line here
(+ its spec in methods/<name>.toml). Imports are lazy so a broken method cannot break the others.
Loading a method checks its class, and the model classes its ``train`` / ``decode`` annotations
name, against the contract (``base.check_contract``)."""
from __future__ import annotations

import importlib
import typing
from contextlib import contextmanager
from typing import Iterator

from evalkit.methods.base import ContractError, Method, Model, TrainedModel, check_contract

METHODS: dict[str, str | type[Method]] = {
    "4dgs": "evalkit.methods.fourdgs:FourDGS",
    "4dgs-cc": "evalkit.methods.fourdgs_cc:FourDGSCC",
    "adc-gs": "evalkit.methods.adc_gs:ADCGS",
}


class UnknownMethod(Exception):
    pass


def _load(name: str, target: str | type[Method]) -> type[Method]:
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = getattr(importlib.import_module(module), attr)
    check_contract(target, Method, name)
    for hook, kind in (("train", TrainedModel), ("decode", Model)):  # the model classes it declares
        try:
            returned = typing.get_type_hints(getattr(target, hook)).get("return")
        except Exception:  # an annotation that does not resolve: the runner checks the model it gets
            continue
        if isinstance(returned, type) and issubclass(returned, Model) and returned not in (Model, TrainedModel):
            check_contract(returned, TrainedModel if issubclass(returned, TrainedModel) else kind, name)
    if target.name != name:
        raise ContractError(f"method {name!r}: {target.__qualname__}.name is {target.name!r}, "
                            f"not the name it is registered under")
    return target


def get_method(name: str) -> Method:
    """A fresh instance of the method registered as ``name`` (``<name>:<variant>`` runs ``<name>``
    with a spec variant). Raises ``UnknownMethod``, or ``ContractError`` for a method class that
    breaks the contract."""
    base = name.partition(":")[0]
    try:
        target = METHODS[base]
    except KeyError:
        raise UnknownMethod(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}") from None
    return _load(base, target)()


@contextmanager
def registered(name: str, target: str | type[Method]) -> Iterator[None]:
    """Register a method for the duration of a ``with`` block (tests, experiments): ``target`` is a
    ``Method`` subclass or ``"module:Class"``. It is checked against the contract at once."""
    if name in METHODS:
        raise ValueError(f"method {name!r} is already registered")
    _load(name, target)
    METHODS[name] = target
    try:
        yield
    finally:
        del METHODS[name]


def method_names() -> list[str]:
    return sorted(METHODS)
