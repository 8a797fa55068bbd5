"""`melody render`: FluidSynth turns MIDI into audible WAV; missing pieces give one clear line."""

from __future__ import annotations

import argparse
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from models.analysis import render, render_cli
from models.core.commands import run_command
from models.core.exceptions import ToolError

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "fur_elise_opening.mid"


def _has_fluidsynth() -> bool:
    if shutil.which("fluidsynth") is None:
        return False
    try:
        render.find_soundfont()
    except ToolError:
        return False
    return True


needs_fluidsynth = pytest.mark.skipif(not _has_fluidsynth(),
                                      reason="FluidSynth or a General MIDI soundfont is absent")


def _rms(path: Path) -> tuple[float, float, int]:
    """RMS of 16-bit samples scaled to [-1, 1], duration in seconds, channels."""
    with wave.open(str(path), "rb") as wav:
        assert wav.getsampwidth() == 2
        frames = wav.readframes(wav.getnframes())
        seconds = wav.getnframes() / wav.getframerate()
        channels = wav.getnchannels()
    samples = np.frombuffer(frames, dtype="<i2").astype(float) / 32768.0
    return float(np.sqrt(np.mean(samples ** 2))), seconds, channels


@pytest.mark.fluidsynth
@needs_fluidsynth
def test_render_fur_elise_is_audible(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "fur_elise.wav"
    args = argparse.Namespace(midi=FIXTURE, output=out, soundfont=None, sample_rate=22050,
                              gain=0.8)
    assert run_command(render_cli, args) == 0
    rms, seconds, channels = _rms(out)
    # 13.5 beats at 72 per minute is 11.25 s, plus the release of the last notes.
    assert 10.0 < seconds < 20.0
    assert channels == 2
    assert rms > 0.01  # silence is 0; a quiet piano passage is well above 0.01


@pytest.mark.fluidsynth
@needs_fluidsynth
def test_render_of_a_non_midi_file_fails_clearly(tmp_path: Path) -> None:
    bogus = tmp_path / "not.mid"
    bogus.write_bytes(b"this is not MIDI")
    with pytest.raises(ToolError):
        render.render_midi(bogus, tmp_path / "out.wav")


def test_missing_soundfont_says_how_to_install(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(render.SOUNDFONT_ENV, raising=False)
    monkeypatch.setattr(render, "SOUNDFONT_DIRS", (str(tmp_path / "nowhere"),))
    args = argparse.Namespace(midi=FIXTURE, output=tmp_path / "x.wav", soundfont=None,
                              sample_rate=44100, gain=0.8)
    assert run_command(render_cli, args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "soundfont" in err
    assert "apt-get install timgm6mb-soundfont" in err
    assert not (tmp_path / "x.wav").exists()


def test_explicit_soundfont_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match="soundfont not found"):
        render.find_soundfont(tmp_path / "missing.sf2")


def test_soundfont_search_prefers_general_midi_names(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(render.SOUNDFONT_ENV, raising=False)
    folder = tmp_path / "sf2"
    folder.mkdir()
    (folder / "aaa_odd.sf2").write_bytes(b"x")
    (folder / "TimGM6mb.sf2").write_bytes(b"x")
    assert render.find_soundfont(search_dirs=(str(folder),)).name == "TimGM6mb.sf2"
    (folder / "TimGM6mb.sf2").unlink()
    assert render.find_soundfont(search_dirs=(str(folder),)).name == "aaa_odd.sf2"
    monkeypatch.setenv(render.SOUNDFONT_ENV, str(folder / "aaa_odd.sf2"))
    assert render.find_soundfont(search_dirs=()).name == "aaa_odd.sf2"


def test_missing_fluidsynth_says_how_to_install(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    font = tmp_path / "font.sf2"
    font.write_bytes(b"x")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ToolError, match="apt-get install fluidsynth"):
        render.render_midi(FIXTURE, tmp_path / "x.wav", soundfont=font)


def test_bad_gain_is_one_clear_error(tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(midi=FIXTURE, output=tmp_path / "x.wav", soundfont=None,
                              sample_rate=44100, gain=50.0)
    assert run_command(render_cli, args) == 2
    assert "--gain must be within 0 and 10 (received 50.0)" in capsys.readouterr().err
