"""Hatch build hook: compile keyflow's hot-path modules with mypyc.

keyflow is pure Python, and every module works as it is. A wheel also carries C
extensions of the modules every trigger and every run goes through, compiled by mypyc
(part of mypy, which checks this code anyway) from the very same sources; Python imports
an extension in preference to the ``.py`` beside it. ``make compiled`` builds such an
install, ``make bench`` measures it, and ``make test`` runs the whole suite against it as
well as against the sources.

Not compiled: editable installs (an extension would shadow every later edit), builds
with ``HATCH_BUILD_NO_HOOKS=true``, and builds where compiling fails (no C compiler or
Python headers): those get the pure-Python wheel, with a warning, unless
``KEYFLOW_COMPILE=required`` (``make test`` and release builds) makes that an error. The sources are
compiled from a copy in a temporary directory, so nothing is written into ``src/``.
"""

from __future__ import annotations

import os
import runpy
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class MypycBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    """Adds the mypyc-compiled hot-path modules to a wheel."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Compile, then add every built extension to the wheel."""
        if self.target_name != "wheel" or version == "editable":
            return
        # The hot-path modules: one list, in keyflow/build.py, which also tells at run time
        # (and the tests check) that a compiled install really runs compiled.
        build_info = runpy.run_path(str(Path(self.root, "src", "keyflow", "build.py")))
        modules: tuple[str, ...] = build_info["HOT_PATH_MODULES"]
        self._workdir = Path(tempfile.mkdtemp(prefix="keyflow-mypyc-"))
        required = os.environ.get("KEYFLOW_COMPILE", "").lower() == "required"
        try:
            built = self._compile(modules)
        except Exception as exc:  # no compiler, no headers: the pure wheel still works
            if required:  # make test and release builds: a pure wheel would be a lie
                raise RuntimeError(
                    f"keyflow: KEYFLOW_COMPILE=required, but compiling the hot path with "
                    f"mypyc failed: {exc!r}"
                ) from exc
            self.app.display_warning(
                f"keyflow: compiling the hot path with mypyc failed ({exc!r}); "
                "building the pure-Python wheel instead (KEYFLOW_COMPILE=required makes "
                "this an error)"
            )
            return
        for path, name in built:
            build_data["force_include"][str(path)] = name
        build_data["pure_python"] = False
        build_data["infer_tag"] = True

    def _compile(self, modules: tuple[str, ...]) -> list[tuple[Path, str]]:
        """Compile ``modules``; return each extension built and its path in the wheel."""
        from mypyc.build import mypycify
        from setuptools import Distribution

        package = self._workdir / "keyflow"
        shutil.copytree(
            Path(self.root, "src", "keyflow"),
            package,
            ignore=shutil.ignore_patterns("__pycache__", "*.so"),
        )
        sources = [f"keyflow/{name.replace('.', '/')}.py" for name in modules]
        cwd = os.getcwd()
        os.chdir(self._workdir)  # mypyc writes its C files relative to the working dir
        try:
            extensions = mypycify(
                # Imported libraries are not installed in an isolated build environment
                # (and need not be): mypyc sees them as Any.
                ["--ignore-missing-imports", *sources],
                opt_level="3",
                group_name="keyflow.hot",  # its shared library inside the package
                target_dir="c",
            )
            dist = Distribution({"name": "keyflow", "ext_modules": extensions})
            build_ext: Any = dist.get_command_obj("build_ext")
            build_ext.build_lib = "lib"
            build_ext.build_temp = "obj"
            dist.run_command("build_ext")
        finally:
            os.chdir(cwd)
        lib = self._workdir / "lib"
        return [
            (built, built.relative_to(lib).as_posix())
            for built in sorted(lib.rglob("*.so")) + sorted(lib.rglob("*.pyd"))
        ]

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        """Remove the temporary build directory."""
        workdir = getattr(self, "_workdir", None)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
