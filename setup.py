"""Build hook: the protocol specs (``datasets/*.toml``, ``methods/*.toml``), which users edit at the
repository's top level, travel inside the package as ``evalkit/_specs/`` so an installed evalkit
finds them from any folder (``evalkit.specs.specs_dir``). Everything else is in pyproject.toml."""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildWithSpecs(build_py):
    def run(self) -> None:
        super().run()
        for kind in ("datasets", "methods"):
            dest = Path(self.build_lib) / "evalkit" / "_specs" / kind
            self.mkpath(str(dest))
            for spec in sorted((ROOT / kind).glob("*.toml")):
                self.copy_file(str(spec), str(dest / spec.name))


setup(cmdclass={"build_py": BuildWithSpecs})
