"""``melodyd engine``: serve style models over zmq (also ``python -m engine``).

Registered under the ``melodyd.commands`` entry-point group, so the bridge's ``melodyd``
dispatcher reaches it without importing the engine. onnxruntime is imported only in
``run`` (through ``engine.model``), so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.keys import CurveKeys, choose_security, make_keys
from engine.server import EngineServer
from models.core.commands import configure_logging, run_command
from models.core.exceptions import EngineError
from models.core.paths import styles_directory
from models.core.settings import EngineSettings, load_settings

logger = logging.getLogger(__name__)

HELP = "serve style models to bridges over zmq (the engine process)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``melodyd engine``."""
    parser.add_argument("--bind", metavar="ADDR",
                        help="zmq endpoint to bind (default: [engine] bind, "
                             "tcp://127.0.0.1:5757)")
    parser.add_argument("--style", metavar="S[,S...]", action="append", default=[],
                        help="installed styles to serve (models/pretrained/<style>.onnx); "
                             "default: every installed style when no --model is given")
    parser.add_argument("--model", metavar="PATH", action="append", default=[],
                        help="a melodyd ONNX file to serve under the style in its metadata "
                             "(repeatable)")
    parser.add_argument("--provider", choices=("cpu", "cuda"),
                        help="ONNX Runtime execution provider (default: [engine] provider)")
    parser.add_argument("--config", metavar="PATH", help="a config file merged over the defaults")
    parser.add_argument("--curve-keys", metavar="DIR",
                        help="serve with CURVE using DIR/server.key_secret and the public "
                             "keys in DIR/authorized_clients")
    parser.add_argument("--curve", action="store_true",
                        help="require CURVE even on a loopback address")
    parser.add_argument("--insecure", action="store_true",
                        help="allow a non-loopback address without CURVE (trusted networks "
                             "only)")
    parser.add_argument("--exit-with-parent", type=int, metavar="PID",
                        help="stop when process PID is gone (melodyd passes its own pid to its "
                             "private engine, so a killed melodyd leaves no engine behind)")
    parser.add_argument("--make-keys", metavar="DIR",
                        help="write a server and a client CURVE key pair into DIR and exit")


def _configured_keys(args: argparse.Namespace, settings: EngineSettings) -> CurveKeys | None:
    if args.curve_keys:
        return CurveKeys.from_dir(args.curve_keys)
    secret, clients = settings.curve_server_secret, settings.curve_clients_dir
    if bool(secret) != bool(clients):
        raise EngineError("[engine] curve_server_secret and curve_clients_dir must be set "
                          "together")
    if secret:
        return CurveKeys(Path(secret).expanduser(), Path(clients).expanduser())
    return None


def _style_names(values: list[str]) -> list[str]:
    names = [name.strip() for value in values for name in value.split(",")]
    if any(not name for name in names):
        raise EngineError(f"--style takes comma-separated names (received {values!r})")
    return names


def load_decoders(styles: list[str], models: list[str], settings: EngineSettings,
                  directory: Path | None = None) -> dict[str, Any]:
    """Load every requested model and build one decoder per style.

    ``directory``: where installed styles are looked for (``[styles] directory``; default
    the shipped ``models/pretrained``).

    Raises:
        EngineError: no style to serve, a style is not installed, a file is not a melodyd
            model, or two models claim the same style.
    """
    # onnxruntime and miditok load here, so `melodyd --help` stays fast.
    from engine.decoder import StyleDecoder  # noqa: PLC0415
    from engine.model import installed_styles, load_model, resolve_model_path  # noqa: PLC0415

    installed = installed_styles(directory)
    # A style with no file of its own may be played by an installed style-conditioned
    # model's token: load every installed file then, and check once they are loaded.
    by_token = [name for name in styles if name not in installed]
    paths = [resolve_model_path(style=name, directory=directory) for name in styles
             if name in installed]
    paths += [resolve_model_path(model=path) for path in models]
    if by_token:
        paths += [path for path in installed.values() if path not in paths]
    if not paths:
        paths = list(installed.values())
        if not paths:
            raise EngineError(f"no style to serve: none is installed in "
                              f"{directory or 'models/pretrained'}/; pass --model PATH or "
                              f"--style NAME")
    decoders: dict[str, Any] = {}
    conditioned: list[Any] = []
    for path in paths:
        model = load_model(path, settings)
        if model.style in decoders:
            raise EngineError(f"two models serve style {model.style!r} "
                              f"({decoders[model.style].model.path} and {path})")
        decoders[model.style] = decoder = StyleDecoder(model, settings)
        conditioned.append(decoder)
    for decoder in conditioned:
        decoder.warm_up()  # the first player's answer must not pay ONNX Runtime's set-up
    # A style-conditioned model also serves every style its vocabulary names (a style is
    # a token there, not a file): one decoder under several names, so the style knob
    # switches without loading anything. A model made for one style keeps its name.
    for decoder in conditioned:
        for name in decoder.tokenizer.style_slots:
            if name not in decoders:
                decoders[name] = decoder
            elif decoders[name] is not decoder:
                logger.info("style %r is served by its own model %s, not by %s's style "
                            "token", name, decoders[name].model.path.name,
                            decoder.model.path.name)
    missing = [name for name in by_token if name not in decoders]
    if missing:
        raise EngineError(f"style {missing[0]!r} is not installed: no "
                          f"models/pretrained/{missing[0]}.onnx and no loaded model plays it "
                          f"(served: {', '.join(sorted(decoders)) or 'none'}); add one with "
                          f"`melody add-style` or pass --model PATH")
    return decoders


def settle_heap() -> None:
    """Collect, then freeze what start-up left (models, vocabularies, libraries).

    Python's full garbage collection walks every tracked object; after loading, one took
    14-29 ms, on the engine's thread, in the middle of whatever request allocated last.
    Frozen objects are never walked again, so a full collection then only looks at what
    serving created since.
    """
    gc.collect()
    gc.freeze()


PARENT_POLL_S = 0.5


def watch_parent(pid: int, on_gone: Callable[[], None]) -> threading.Thread:
    """Call ``on_gone()`` once this process is no longer the child of ``pid``.

    A child whose parent dies is re-parented (to init or a subreaper), so a changed
    ``os.getppid()`` means the parent is gone, however it died (even SIGKILL), on Linux
    and macOS alike.
    """

    def watch() -> None:
        while os.getppid() == pid:
            time.sleep(PARENT_POLL_S)
        logger.warning("parent process %d is gone; stopping", pid)
        on_gone()

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM.

    Raises:
        EngineError: bad flags, unusable keys, a model that cannot be loaded, or an
            address that needs CURVE keys.
    """
    if args.make_keys:
        paths = make_keys(args.make_keys)
        for name, path in paths.items():
            print(f"{name:20s} {path}")
        return 0
    overrides = {"engine": {"bind": args.bind, "provider": args.provider}}
    everything = load_settings(args.config, overrides)
    settings = everything.engine
    keys = choose_security(settings.bind, _configured_keys(args, settings),
                           insecure=args.insecure, force_curve=args.curve)
    if keys is not None:
        keys.load()  # fail on bad keys before spending seconds loading models
    decoders = load_decoders(_style_names(args.style), args.model, settings,
                             styles_directory(everything.styles.directory))
    server = EngineServer(decoders, settings, curve=keys)

    def on_signal(signum: int, _frame: Any) -> None:
        logger.info("received %s, stopping", signal.Signals(signum).name)
        server.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    if args.exit_with_parent:
        watch_parent(args.exit_with_parent, server.stop)
    settle_heap()
    try:
        server.serve()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m engine``: the same command without the ``melodyd`` dispatcher."""
    parser = argparse.ArgumentParser(prog="python -m engine", description=HELP)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    return run_command(sys.modules[__name__], args)
