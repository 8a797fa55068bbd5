"""Build hook: compile melodyd's JACK MIDI client (bridge/native/jackmidi.c) at install.

The library is plain C loaded with ctypes (no Python headers, no JACK headers, one build
for every Python version), so the only requirement is a C compiler. Without one the
install still succeeds, with a warning: melodyd then uses python-rtmidi's JACK ports.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("bridge/native/jackmidi.c")
LIBRARY = Path("bridge/native/libmelodyd_jack.so")
FLAGS = ["-O2", "-fPIC", "-shared", "-std=c11", "-Wall"]
COMPILE_TIMEOUT_S = 120


def compiler() -> list[str] | None:
    """The C compiler command: $CC, Python's own, or cc/gcc/clang on PATH."""
    for candidate in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc", "gcc",
                      "clang"):
        if candidate:
            command = shlex.split(candidate)
            if command and shutil.which(command[0]):
                return command
    return None


class NativeJackClientHook(BuildHookInterface):
    """Compile the library next to its source; ship it in wheels."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        source, library = root / SOURCE, root / LIBRARY
        if not self.compile(source, library):
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":  # an editable install imports from the source tree
            build_data["force_include"][str(library)] = str(LIBRARY)

    def compile(self, source: Path, library: Path) -> bool:
        """Build ``library``; False (with a warning) where that is not possible here."""
        if os.name != "posix" or not source.exists():
            return False  # JACK on Windows goes through python-rtmidi
        command = compiler()
        if command is None:
            self.app.display_warning("melodyd: no C compiler found; melodyd will use "
                                     "python-rtmidi's JACK ports (install gcc and reinstall "
                                     "for melodyd's own, frame-accurate JACK client)")
            return False
        # The jack_* symbols resolve when libjack is loaded first (see the C file).
        flags = FLAGS + (["-undefined", "dynamic_lookup"] if sys.platform == "darwin" else [])
        try:
            subprocess.run([*command, *flags, "-o", str(library), str(source)], check=True,
                           capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
            detail = getattr(err, "stderr", "") or str(err)
            self.app.display_warning(f"melodyd: could not build the JACK client "
                                     f"({detail.strip()}); melodyd will use python-rtmidi's "
                                     "JACK ports")
            return False
        return True
