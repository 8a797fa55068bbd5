"""``melody jam-eval``: scripted calls through melodyd's policy and engine, answers scored.

See ``engine.tools.jam`` for how a call is played and scored and ``engine.tools.jam_music`` for the
held-out openings and the style classifier. Prints one table row per style and call
family and writes every answer to JSON (``--json``). ``bench/jam.py`` runs the same.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.core.exceptions import MelodyError, ToolError

logger = logging.getLogger(__name__)

HELP = "jam with the installed styles: scripted calls, scored answers (key, density, style, lead)"
FAMILIES = ("c_major", "keys", "meters", "tempi", "texture", "held-out")
HELD_OUT = "held-out"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``melody jam-eval``."""
    parser.add_argument("--styles", default=None,
                        help="comma-separated installed styles (default: every installed one)")
    parser.add_argument("--model", action="append", default=[], metavar="M.onnx",
                        help="a model file to jam with instead (repeatable)")
    parser.add_argument("--calls", default=",".join(FAMILIES),
                        help="comma-separated call families or call names "
                             f"(default: all of {', '.join(FAMILIES)})")
    parser.add_argument("--repeats", type=int, default=3,
                        help="answers per call and style, each with its own sampling seed "
                             "(default 3)")
    parser.add_argument("--seed", type=int, default=0, help="the first sampling seed (default 0)")
    parser.add_argument("--openings", type=int, default=1,
                        help="held-out openings per style among the calls (default 1)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="built style datasets (<root>/<style>/manifest.json) for the "
                             "held-out openings and the classifier (default: music21's corpus)")
    parser.add_argument("--data", type=Path, default=None, metavar="DIR",
                        help="one dataset of several styles (its manifest names each "
                             "piece's style, e.g. the conditioned model's): each style's "
                             "openings and the classifier's real music come from its own "
                             "pieces (instead of --data-root)")
    parser.add_argument("--mode", choices=("call",), default="call",
                        help="interaction mode played (call-and-response)")
    parser.add_argument("--config", metavar="FILE",
                        help="a config.toml merged over the defaults ([interaction], "
                             "[sampling], [engine] as melodyd would use them)")
    parser.add_argument("--critic-weights", default=None, metavar="TERM=W,...",
                        help="best-of-N critic weights to try instead of the engine's "
                             "(terms: log_likelihood, key, tonal, density, register, "
                             "rhythm, variety); "
                             "with [sampling] candidates > 1 in --config")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="write the summary and every answer here")


def _select_calls(spec: str, calls: Sequence[Any]) -> list[Any]:
    wanted = [w.strip() for w in spec.split(",") if w.strip()]
    known = {c.family for c in calls} | {c.name for c in calls}
    unknown = [w for w in wanted if w not in known and w != HELD_OUT]
    if unknown:
        raise ToolError(f"--calls: unknown {', '.join(unknown)} (families: "
                        f"{', '.join(FAMILIES)}; calls: {', '.join(c.name for c in calls)})")
    return [c for c in calls if c.family in wanted or c.name in wanted]


def _decoders(args: argparse.Namespace, settings: Any) -> dict[str, Any]:
    """style -> a live decoder (``allow_eos`` on, as the server runs it)."""
    from engine.decoder import StyleDecoder  # noqa: PLC0415 - onnxruntime loads here
    from engine.model import installed_styles, load_model, resolve_model_path  # noqa: PLC0415

    if args.model:
        paths = [resolve_model_path(model=m) for m in args.model]
    else:
        installed = installed_styles()
        wanted = ([s.strip() for s in args.styles.split(",") if s.strip()] if args.styles
                  else list(installed))
        if not wanted:
            raise ToolError("no style is installed in models/pretrained/; pass --model")
        paths = [resolve_model_path(style=s) for s in wanted]
    decoders = {}
    for path in paths:
        model = load_model(path, settings.engine)
        decoder = StyleDecoder(model, settings.engine)
        slots = decoder.tokenizer.style_slots
        if args.model and args.styles and slots:
            # A style-conditioned model plays each asked style by its style token.
            for name in (s.strip() for s in args.styles.split(",") if s.strip()):
                if name not in slots:
                    raise ToolError(f"{path.name} has no style {name!r} (its styles: "
                                    f"{', '.join(n for n in slots if n)})")
                decoders[name] = decoder
        else:
            decoders[model.style] = decoder
    return decoders


def critic_weights(spec: str | None) -> Any:
    """``--critic-weights`` into ``engine.critic.CriticWeights`` (the defaults for ``None``).

    Raises:
        ToolError: an unknown term or a value that is not a number.
    """
    import dataclasses  # noqa: PLC0415

    from engine.critic import CriticWeights  # noqa: PLC0415

    weights = CriticWeights()
    if not spec:
        return weights
    names = [f.name for f in dataclasses.fields(CriticWeights)]
    values = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        name, _, value = part.partition("=")
        if name not in names:
            raise ToolError(f"--critic-weights: unknown term {name!r} (terms: {', '.join(names)})")
        try:
            values[name] = float(value)
        except ValueError:
            raise ToolError(f"--critic-weights: {part!r} is not TERM=NUMBER") from None
    return dataclasses.replace(weights, **values)


def _signatures(settings: Any) -> list[tuple[int, int]]:
    """The time signatures of the ``[tokens]`` vocabulary (``"6/8"`` -> ``(6, 8)``)."""
    return [(int(t.split("/")[0]), int(t.split("/")[1])) for t in settings.tokens.time_signatures]


def run_jam(args: argparse.Namespace) -> dict[str, Any]:
    """Play every selected call to every style ``--repeats`` times; the results.

    Raises:
        ToolError: bad flags.
        EngineError: a model cannot be loaded or fails.
    """
    from tqdm import tqdm  # noqa: PLC0415

    from engine.tools.jam import (  # noqa: PLC0415
        Call,
        JamConfig,
        answer_call,
        classifier_verdict,
        synthetic_calls,
    )
    from engine.tools.jam_music import load_real_music  # noqa: PLC0415
    from engine.tools.jam_summary import summarise  # noqa: PLC0415
    from models.core.settings import load_settings  # noqa: PLC0415

    if not 1 <= args.repeats <= 100:
        raise ToolError(f"--repeats must be within 1 and 100 (received {args.repeats})")
    settings = load_settings(args.config)
    decoders = _decoders(args, settings)
    weights = critic_weights(getattr(args, "critic_weights", None))
    for decoder in decoders.values():
        if decoder.best_of_n is not None:  # a recurrent model decodes one candidate
            decoder.best_of_n.weights = weights
    calls = _select_calls(args.calls, synthetic_calls())
    families = {w.strip() for w in args.calls.split(",")}
    answer_bars = settings.interaction.response_bars
    real = load_real_music(list(decoders), call_bars=2, answer_bars=answer_bars,
                           openings=args.openings, data_root=args.data_root,
                           dataset=args.data,
                           signatures=_signatures(settings))
    if HELD_OUT in families:
        for style, openings in real.openings.items():
            for i, opening in enumerate(openings):
                calls.append(Call(f"heldout_{style}" + (f"_{i + 1}" if i else ""), HELD_OUT,
                                  opening.notes, opening.time_signature,
                                  source=opening.source))
    config = JamConfig(repeats=args.repeats, seed=args.seed, mode=args.mode, settings=settings)
    records = []
    total = len(decoders) * len(calls) * args.repeats
    with tqdm(total=total, unit="answer", desc="jamming") as bar:
        for style, decoder in decoders.items():
            verdict = (None if real.classifier is None
                       else classifier_verdict(real.classifier, style))
            for call in calls:
                for repeat in range(args.repeats):
                    try:
                        records.append(answer_call(decoder, style, call, config, repeat=repeat,
                                                   verdict=verdict))
                    except MelodyError as err:  # one refused call is a result, not the end
                        logger.warning("%s answering %s: %s", style, call.name, err)
                        records.append({"style": style, "call": call.name,
                                        "family": call.family, "repeat": repeat,
                                        "error": str(err)})
                    bar.update()
    return {
        "generated_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": shlex.join(["melody", "jam-eval", *sys.argv[2:]]),
        "config": {"repeats": args.repeats, "seed": args.seed, "mode": args.mode,
                   "critic_weights": vars_of(weights),
                   "interaction": vars_of(settings.interaction),
                   "sampling": vars_of(settings.sampling)},
        "classifier": real.report,
        "calls": [{"name": c.name, "family": c.family, "bpm": c.bpm,
                   "time_signature": list(c.time_signature), "notes": len(c.notes),
                   "bars": c.bars, "source": c.source} for c in calls],
        "summary": summarise(records, real.real_recall),
        "answers": records,
    }


def vars_of(section: Any) -> dict[str, Any]:
    """A settings section as JSON-ready values."""
    import dataclasses  # noqa: PLC0415

    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(section).items()}


def run(args: argparse.Namespace) -> int:
    """Run the harness, print the table, write the JSON.

    Raises:
        ToolError: bad flags.
        EngineError: a model cannot be loaded or fails.
    """
    from engine.tools.jam_summary import format_table  # noqa: PLC0415

    results = run_jam(args)
    print(format_table(results["summary"]))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        print(args.json)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m engine.tools.jam_cli`` / ``bench/jam.py``: the same as ``melody jam-eval``."""
    from models.core.commands import configure_logging, run_command  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="melody jam-eval", description=HELP)
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    return run_command(sys.modules[__name__], args)


if __name__ == "__main__":
    sys.exit(main())
