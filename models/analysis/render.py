"""MIDI to audio through FluidSynth with a General MIDI soundfont found on the system.

FluidSynth is a program, not a Python dependency: it is called as a subprocess in its
fast "render to file" mode, so nothing here needs a sound card or an audio server.

Torch-free.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

from models.core.exceptions import ToolError

logger = logging.getLogger(__name__)

SOUNDFONT_ENV = "MELODYD_SOUNDFONT"
INSTALL_SOUNDFONT_HINT = (
    "install a General MIDI soundfont (Debian/Ubuntu: apt-get install timgm6mb-soundfont, "
    "or fluid-soundfont-gm for a larger one; macOS: brew install fluid-synth and download a "
    ".sf2) or pass --soundfont FILE.sf2")
INSTALL_FLUIDSYNTH_HINT = (
    "FluidSynth is not installed: apt-get install fluidsynth (Debian/Ubuntu), "
    "dnf install fluidsynth (Fedora) or brew install fluid-synth (macOS)")

# Where distributions put soundfonts; the first existing file wins, in this order.
SOUNDFONT_DIRS = (
    "/usr/share/sounds/sf2",
    "/usr/share/soundfonts",
    "/usr/share/sounds/sf3",
    "/usr/local/share/soundfonts",
    "/usr/share/fluidsynth",
    "/usr/local/share/fluidsynth",
    "/opt/homebrew/share/soundfonts",
    "/opt/homebrew/share/fluid-synth",
    "~/.local/share/soundfonts",
    "~/.fluidsynth",
)
# Inside a folder, General MIDI sets we know come first; then any other soundfont.
PREFERRED_NAMES = ("default-GM.sf2", "default.sf2", "FluidR3_GM.sf2", "FluidR3_GM.sf3",
                   "GeneralUser GS.sf2", "TimGM6mb.sf2", "MuseScore_General.sf3")
SOUNDFONT_SUFFIXES = (".sf2", ".sf3")
# Rendering a few minutes of MIDI takes about a second; a hung FluidSynth must not hang us.
RENDER_TIMEOUT_S = 600


def _is_soundfont(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in SOUNDFONT_SUFFIXES


def find_soundfont(explicit: str | Path | None = None,
                   search_dirs: tuple[str, ...] | None = None) -> Path:
    """The soundfont to render with.

    Args:
        explicit: a file given by the user (``--soundfont``); it must exist.
        search_dirs: folders searched when neither ``explicit`` nor ``$MELODYD_SOUNDFONT``
            names a file (default ``SOUNDFONT_DIRS``).

    Raises:
        ToolError: the given file does not exist, or none is found (the message says how
            to install one).
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not _is_soundfont(path):
            raise ToolError(f"soundfont not found or not .sf2/.sf3: {path}")
        return path
    env = os.environ.get(SOUNDFONT_ENV)
    if env:
        path = Path(env).expanduser()
        if not _is_soundfont(path):
            raise ToolError(f"${SOUNDFONT_ENV} names no soundfont file: {path}")
        return path
    dirs = SOUNDFONT_DIRS if search_dirs is None else search_dirs
    for folder in (Path(d).expanduser() for d in dirs):
        if not folder.is_dir():
            continue
        for name in PREFERRED_NAMES:
            if _is_soundfont(folder / name):
                return folder / name
        others = sorted(p for p in folder.iterdir() if _is_soundfont(p))
        if others:
            return others[0]
    raise ToolError(f"no General MIDI soundfont found: {INSTALL_SOUNDFONT_HINT}")


def find_fluidsynth() -> str:
    """Path of the ``fluidsynth`` program.

    Raises:
        ToolError: it is not on ``PATH`` (the message says how to install it).
    """
    program = shutil.which("fluidsynth")
    if program is None:
        raise ToolError(INSTALL_FLUIDSYNTH_HINT)
    return program


def render_midi(midi: str | Path, wav: str | Path, soundfont: str | Path | None = None,
                sample_rate: int = 44100, gain: float = 0.8) -> Path:
    """Render a MIDI file to a 16-bit stereo WAV file.

    Args:
        midi: the MIDI file.
        wav: the WAV file to write; parent folders are created.
        soundfont: a soundfont file, or ``None`` to search the system.
        sample_rate: samples per second.
        gain: FluidSynth's master gain (0.2 is its quiet default; 0.8 is loud, not clipping
            for piano music).

    Raises:
        ToolError: the MIDI file is missing, FluidSynth or a soundfont is missing, or
            FluidSynth fails or writes no audio.
    """
    midi, wav = Path(midi), Path(wav)
    if not midi.is_file():
        raise ToolError(f"MIDI file not found: {midi}")
    font = find_soundfont(soundfont)
    program = find_fluidsynth()
    wav.parent.mkdir(parents=True, exist_ok=True)
    # -n: no MIDI input driver, -i: no shell, -q: quiet, -F: render to file (no audio device).
    command = [program, "-n", "-i", "-q", "-F", str(wav), "-T", "wav", "-r", str(sample_rate),
               "-g", str(gain), str(font), str(midi)]
    logger.debug("running %s", " ".join(command))
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False,
                                timeout=RENDER_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ToolError(f"FluidSynth could not render {midi}: {err}") from err
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise ToolError(f"FluidSynth failed on {midi} (exit {result.returncode}): "
                        f"{detail[-1] if detail else 'no message'}")
    # FluidSynth exits 0 on some unreadable inputs; an empty or header-only file says so.
    if not wav.is_file() or wav.stat().st_size <= 44:
        raise ToolError(f"FluidSynth wrote no audio for {midi} (is it a valid MIDI file?)")
    logger.info("rendered %s with %s", wav, font.name)
    return wav
