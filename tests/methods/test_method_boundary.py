"""The method boundary: method packages import shared code only, never a sibling method; the
registry refuses a method class that breaks the contract; the runner calls hooks directly."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import evalkit
from evalkit.codec.container import Bitstream
from evalkit.methods import registry
from evalkit.methods.base import ContractError, Method, Model, TrainedModel, check_contract

ROOT = Path(evalkit.__file__).resolve().parent
METHOD_PACKAGES = sorted(p.parent.name for p in (ROOT / "methods").glob("*/__init__.py"))
HOOKS = {"prepare_training", "prepare_coding", "quality_stages", "export_ply", "effective_config", "iterations",
         "reused", "encode", "decode", "train", "render", "num_primitives"}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file, function-level ones included."""
    package = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def _sibling_imports(files: list[Path], allowed: str | None) -> list[str]:
    bad = []
    for f in files:
        for line, mod in _imports(f):
            parts = mod.split(".")
            if parts[:2] == ["evalkit", "methods"] and len(parts) > 2 and parts[2] in METHOD_PACKAGES \
                    and parts[2] != allowed:
                bad.append(f"{f.relative_to(ROOT.parent)}:{line} imports {mod}")
    return bad


def test_there_are_method_packages_to_check() -> None:
    assert {"fourdgs", "fourdgs_cc"} <= set(METHOD_PACKAGES)


@pytest.mark.parametrize("package", METHOD_PACKAGES)
def test_a_method_package_imports_no_other_method(package: str) -> None:
    """Source: every import of every module (also inside functions) stays off sibling methods."""
    assert _sibling_imports(sorted((ROOT / "methods" / package).rglob("*.py")), package) == []


def test_shared_code_imports_no_method() -> None:
    shared = [f for d in ("models", "train", "codec", "render", "data", "metrics")
              for f in sorted((ROOT / d).rglob("*.py"))]
    assert _sibling_imports(shared, None) == []


_LOADER = """
import importlib, json, os, pkgutil, sys
import torch, gsplat  # the heavy third-party imports once, before the children fork
for package in sys.argv[1:]:
    r, w = os.pipe()
    if os.fork() == 0:  # a child: a fresh set of evalkit modules
        pkg = importlib.import_module("evalkit.methods." + package)
        for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            importlib.import_module(m.name)
        os.write(w, json.dumps(sorted(sys.modules)).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        print(package, fh.read())
    os.wait()
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_importing_every_module_of_a_method_loads_no_other_method() -> None:
    """At run time, in a fresh interpreter per method: import every module of its package, then
    look at what got loaded (catches imports that the source check cannot see, e.g. importlib)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT.parent)}
    out = subprocess.run([sys.executable, "-c", _LOADER, *METHOD_PACKAGES], capture_output=True, text=True,
                         env=env, check=True)
    loaded = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.split(" ", 1)[0] in METHOD_PACKAGES)
    assert sorted(loaded) == METHOD_PACKAGES
    for package, modules in loaded.items():
        others = sorted(m for m in json.loads(modules) if m.split(".")[:2] == ["evalkit", "methods"]
                        and len(m.split(".")) > 2 and m.split(".")[2] in METHOD_PACKAGES and m.split(".")[2] != package)
        assert others == [], f"evalkit.methods.{package} loads other methods' modules"


@pytest.mark.parametrize("path", ["runner.py", "cli.py", "views.py"])
def test_the_runner_and_cli_call_no_hook_through_getattr(path: str) -> None:
    calls = [n for n in ast.walk(ast.parse((ROOT / path).read_text(encoding="utf-8")))
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("getattr", "hasattr")
             and len(n.args) > 1 and isinstance(n.args[1], ast.Constant) and n.args[1].value in HOOKS]
    assert [f"{path}:{c.lineno}" for c in calls] == []


# -- the contract, checked when the registry loads a method ----------------------------------
class _Good(Method):
    name = "good"

    def train(self, scene, rate, ctx):
        raise NotImplementedError

    def decode(self, bits, device, source="<bitstream>"):
        raise NotImplementedError


class _Misspelt(_Good):
    name = "misspelt"

    def prepare_trainig(self, rate, ctx) -> None:  # noqa: D401  (the typo under test)
        pass


class _NoDecode(Method):
    name = "no-decode"

    def train(self, scene, rate, ctx):
        raise NotImplementedError


class _NotAMethod:
    name = "plain"


def test_registry_loads_a_method_that_keeps_the_contract() -> None:
    with registry.registered("good", _Good):
        assert isinstance(registry.get_method("good"), _Good) and "good" in registry.method_names()
    assert "good" not in registry.method_names()


@pytest.mark.parametrize("cls, name, hook", [
    (_Misspelt, "misspelt", "prepare_trainig"), (_NoDecode, "no-decode", "decode"), (_NotAMethod, "plain", "Method")])
def test_registry_refuses_a_method_that_breaks_the_contract(cls, name: str, hook: str) -> None:
    with pytest.raises(ContractError) as err:
        with registry.registered(name, cls):
            pass
    assert name in str(err.value) and hook in str(err.value)
    assert name not in registry.method_names()
    registry.METHODS[name] = f"{__name__}:{cls.__name__}"  # a registry line, loaded lazily
    try:
        with pytest.raises(ContractError, match=hook):
            registry.get_method(name)
    finally:
        del registry.METHODS[name]


class _StagesTypo(TrainedModel):
    def render(self, camera, t):
        return torch.zeros(1, 1, 3)

    def num_primitives(self) -> int:
        return 0

    def encode(self) -> Bitstream:
        return Bitstream(header={}, components={})

    def quality_stage(self):  # the typo under test
        return []


class _ReturnsTypo(_Good):
    name = "returns-typo"

    def train(self, scene, rate, ctx) -> _StagesTypo:
        raise NotImplementedError


def test_registry_checks_the_model_class_train_declares() -> None:
    with pytest.raises(ContractError, match="returns-typo.*quality_stage"):
        with registry.registered("returns-typo", _ReturnsTypo):
            pass


def test_a_misspelt_model_hook_is_refused() -> None:
    with pytest.raises(ContractError, match="quality_stage.*quality_stages"):
        check_contract(_StagesTypo, TrainedModel, "toy")
    parts = {"render": _StagesTypo.render, "num_primitives": _StagesTypo.num_primitives}
    with pytest.raises(ContractError, match="encode"):
        check_contract(type("NoEncode", (TrainedModel,), parts), TrainedModel, "toy")
    check_contract(type("Decoded", (Model,), parts), Model, "toy")


def test_the_registered_methods_keep_the_contract() -> None:
    for name in registry.method_names():
        assert registry.get_method(name).name == name
