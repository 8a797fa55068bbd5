"""The melodyd command line: dispatch, settings from flags, clear one-line errors."""

from __future__ import annotations

import pytest

from bridge import cli
from bridge.drivers.system import NO_MIDI_SYSTEM
from models.core.exceptions import BridgeError


def test_missing_model_names_the_path_and_the_fix(tmp_path, capsys):
    missing = tmp_path / "nope.onnx"
    assert cli.main(["--model", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model file not found") and str(missing) in err
    assert "melody export" in err and "Traceback" not in err


def test_no_installed_style_names_the_folder_and_the_fix(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text(f'[styles]\ndirectory = "{tmp_path}"\n')
    assert cli.main(["--config", str(config), "--style", "romantic"]) == 2
    err = capsys.readouterr().err
    assert "no style is installed" in err and str(tmp_path) in err and "melody export" in err


def test_a_style_without_its_own_file_asks_the_engine_for_every_installed_model(tmp_path):
    """A conditioned model plays "romantic" by token: the engine gets every file and its
    hello says whether one plays the style."""
    (tmp_path / "any.onnx").write_bytes(b"")
    (tmp_path / "baroque.onnx").write_bytes(b"")
    config = tmp_path / "c.toml"
    config.write_text(f'[styles]\ndirectory = "{tmp_path}"\n')
    args = cli.build_parser().parse_args(["--config", str(config), "--style", "romantic"])
    models, style = cli.choose_models(args, cli.settings_from_args(args))
    assert style == "romantic" and [m.stem for m in models] == ["any", "baroque"]


def test_a_style_engine_serves_every_installed_style_the_chosen_first(tmp_path):
    for name in ("baroque", "folk", "romantic"):
        (tmp_path / f"{name}.onnx").write_bytes(b"")
    config = tmp_path / "c.toml"
    config.write_text(f'[styles]\ndirectory = "{tmp_path}"\ndefault = "folk"\n')
    args = cli.build_parser().parse_args(["--config", str(config)])
    models, style = cli.choose_models(args, cli.settings_from_args(args))
    assert style == "folk"  # [styles] default
    assert [m.stem for m in models] == ["folk", "baroque", "romantic"]
    args = cli.build_parser().parse_args(["--config", str(config), "--style", "romantic"])
    models, style = cli.choose_models(args, cli.settings_from_args(args))
    assert style == "romantic" and models[0].stem == "romantic" and len(models) == 3


def test_model_with_a_remote_engine_is_refused(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    assert cli.main(["--model", str(model), "--engine", "tcp://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "--model" in err and "--engine" in err and "Traceback" not in err


def test_flags_override_config(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[clock]\nbpm = 90.0\n[interaction]\nmode = 'accompany'\n")
    args = cli.build_parser().parse_args(
        ["--config", str(config), "--bpm", "133", "--time-signature", "6/8", "--bars", "3",
         "--engine", "tcp://10.0.0.2:5757", "--in", "keys", "--clock", "midi"])
    settings = cli.settings_from_args(args)
    assert settings.clock.bpm == 133.0 and settings.clock.time_signature == "6/8"
    assert settings.clock.source == "midi"
    assert settings.interaction.mode == "accompany"  # from the file, no flag given
    assert settings.interaction.response_bars == 3
    assert settings.engine.connect == "tcp://10.0.0.2:5757"
    assert settings.midi.in_port == "keys" and settings.midi.out_port == "melodyd out"


@pytest.mark.parametrize("signature", ["4/5", "4/32"])  # 4/32: no vocabulary holds it
def test_bad_time_signature_is_one_line(capsys, signature):
    assert cli.main(["--time-signature", signature, "--engine", "tcp://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "time signature" in err and signature in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_unknown_command(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_engine_command_is_dispatched(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["engine", "--help"])
    assert exit_info.value.code == 0
    assert "--bind" in capsys.readouterr().out


def test_no_midi_system_is_one_clear_line(monkeypatch, capsys):
    # No JACK server under this name, and this machine has no ALSA sequencer (CI neither);
    # where one exists, the check is skipped.
    monkeypatch.setenv("JACK_DEFAULT_SERVER", "melodyd-test-no-such-server")
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")
    from bridge.drivers.system import choose_backend  # noqa: PLC0415

    try:
        backend = choose_backend("auto")
    except BridgeError as err:
        assert str(err) == NO_MIDI_SYSTEM
    else:
        pytest.skip(f"this machine has a MIDI system ({backend})")
    assert cli.main(["--list-ports"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {NO_MIDI_SYSTEM}"]


def test_jack_backend_without_server_says_start_jack(monkeypatch, capsys):
    monkeypatch.setenv("JACK_DEFAULT_SERVER", "melodyd-test-no-such-server")
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")
    assert cli.main(["--list-ports", "--backend", "jack"]) == 2
    assert "start a JACK server" in capsys.readouterr().err
