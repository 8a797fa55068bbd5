"""``melody generate``: continue a prime in a style and write MIDI files (offline).

The same engine as the live service decodes here: the prime is the seed, the continuation
starts on the bar after the prime's last onset (or at the prime file's ``continuation``
marker), and every file of a run is decoded together in one batched model call per token.
Without ``--prime``, a few bars of a random piece of a dataset's validation split are the
prime (like the roots' ``sample`` command).
"""

from __future__ import annotations

import argparse
import logging
import math
import random
from pathlib import Path
from typing import Any

from models.core.exceptions import EngineError
from models.core.meter import bar_length
from models.core.notes import Note
from models.core.paths import styles_directory

logger = logging.getLogger(__name__)

HELP = "continue a prime MIDI file (or a dataset piece) in a style and write MIDI files"


def _program(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 127:
        raise argparse.ArgumentTypeError(f"must be a General MIDI program 0-127 (received {value})")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (received {value})")
    return value


def model_and_style(model_path: str | None, style: str | None, settings: Any,
                    directory: Path | None = None) -> tuple[Any, str]:
    """The loaded model and the style it plays: ``--model``, ``--style`` or both.

    ``--style`` alone names an installed file (in ``directory``, ``[styles] directory``;
    default the shipped ``models/pretrained``), or else a style an installed
    style-conditioned model plays by token.

    Raises:
        EngineError: neither flag, a missing file, or a style no model here plays.
    """
    from engine.model import installed_styles, load_model, resolve_model_path  # noqa: PLC0415

    if model_path is None and style is None:
        raise EngineError("give a model with --model M.onnx or an installed style with --style S")
    installed = installed_styles(directory)
    if model_path is not None or style in installed:
        model = load_model(resolve_model_path(model_path, None if model_path else style,
                                              directory), settings)
        candidates = [model]
    else:
        candidates = [load_model(path, settings) for path in installed.values()]
    for model in candidates:
        if style is None or style == model.style or style in model.tokenizer.style_slots:
            return model, style or model.style
    served = sorted({name for m in candidates for name in (m.style, *m.tokenizer.style_slots)})
    raise EngineError(f"style {style!r} is not played by "
                      f"{model_path or 'any installed model'} (it plays: "
                      f"{', '.join(served) or 'none'}); add one with `melody add-style`")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``melody generate``."""
    parser.add_argument("--model", metavar="M.onnx", help="a melodyd ONNX model file")
    parser.add_argument("--style", metavar="S",
                        help="an installed style (models/pretrained), or with --model the "
                             "style a style-conditioned model plays (its style token)")
    parser.add_argument("--prime", metavar="FILE.mid", help="the MIDI file to continue")
    parser.add_argument("--data", metavar="DIR",
                        help="a built dataset whose validation split gives a random prime "
                             "when --prime is not given")
    parser.add_argument("--prime-bars", type=_positive, default=4,
                        help="bars of a dataset piece used as the prime (default 4)")
    parser.add_argument("--bars", type=_positive, default=16,
                        help="length of the continuation in bars (default 16)")
    parser.add_argument("--num-files", type=_positive, default=1,
                        help="how many continuations to write (default 1)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="sampling temperature, above 0 (default 1.0)")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k likeliest tokens")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed; file i uses seed+i (default: fresh entropy)")
    parser.add_argument("--program", type=_program, default=0,
                        help="General MIDI program of the output tracks (default 0, piano)")
    parser.add_argument("--tempo", type=float, default=None,
                        help="tempo written to the files (default: the prime's, else 120)")
    parser.add_argument("--config", metavar="FILE", help="a config.toml merged over defaults")
    parser.add_argument("-o", "--output", metavar="OUTDIR", required=True,
                        help="folder for the MIDI files")


def _dataset_prime(data: str, bars: int, rng: random.Random) -> tuple[list[Note], tuple[int, int]]:
    """A few bars of a random validation piece, re-based to beat 0."""
    from models.data.manifest import TokenDataset  # noqa: PLC0415 - only this path needs it

    dataset = TokenDataset(data, "validation")
    if len(dataset) == 0:
        raise EngineError(f"{data} has no validation pieces to take a prime from")
    tokenizer = dataset.tokenizer
    ids = dataset[rng.randrange(len(dataset))]
    piece = tokenizer.decode_notes(ids)
    if not piece:
        raise EngineError(f"the chosen validation piece of {data} has no notes")
    # The piece's first time signature sets the bar grid of the prime.
    signature = (4, 4)
    for token in ids:
        text = tokenizer.tokens[int(token)]
        if text.startswith("TimeSig_"):
            numerator, denominator = text.split("_")[1].split("/")
            signature = (int(numerator), int(denominator))
            break
    length = bar_length(signature)
    last_bar = int(piece[-1].onset // length)
    first = rng.randrange(max(1, last_bar - bars + 2))
    lo, hi = first * length, (first + bars) * length
    notes = [n.shifted(-lo) for n in piece if lo <= n.onset < hi]
    return notes, signature


def _write(path: Path, prime: list[Note], continuation: list[Note], *, program: int,
           time_signature: tuple[int, int], tempo: float, start: float) -> None:
    """A MIDI file: the prime and the continuation as two tracks on one program."""
    import symusic  # noqa: PLC0415

    from models.data.midifile import CONTINUATION_MARKER  # noqa: PLC0415

    tpq = 480
    score = symusic.Score(tpq)
    score.tempos.append(symusic.Tempo(0, qpm=float(tempo)))
    score.time_signatures.append(symusic.TimeSignature(0, *time_signature))
    score.markers.append(symusic.TextMeta(round(start * tpq), CONTINUATION_MARKER))
    for name, notes in (("prime", prime), ("continuation", continuation)):
        track = symusic.Track(name=name, program=program, is_drum=False)
        for note in notes:
            track.notes.append(symusic.Note(max(0, round(note.onset * tpq)),
                                            max(1, round(note.duration * tpq)),
                                            note.pitch, note.velocity))
        score.tracks.append(track)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        score.dump_midi(str(path))
    except (RuntimeError, OSError) as err:
        raise EngineError(f"cannot write {path}: {err}") from err


def run(args: argparse.Namespace) -> int:
    """Generate ``--num-files`` continuations and write them.

    Raises:
        EngineError: no prime source, an unreadable prime, a model that cannot be loaded.
    """
    from tqdm import tqdm  # noqa: PLC0415

    from engine.decoder import StyleDecoder  # noqa: PLC0415 - onnxruntime loads here
    from models.core.protocol.messages import GenerateRequest, SamplingParams  # noqa: PLC0415
    from models.core.settings import load_settings  # noqa: PLC0415
    from models.data.midifile import continuation_beat, read_midi  # noqa: PLC0415

    if args.temperature <= 0:
        raise EngineError(f"--temperature must be above 0 (received {args.temperature})")
    everything = load_settings(args.config)
    settings = everything.engine
    model, style = model_and_style(args.model, args.style, settings,
                                   styles_directory(everything.styles.directory))
    rng = random.Random(args.seed)
    tempo = 120.0
    if args.prime:
        midi = read_midi(args.prime)
        prime, time_signature, tempo = list(midi.notes), midi.time_signature, midi.tempo
        start = continuation_beat(midi)
        stem = Path(args.prime).stem
    elif args.data:
        prime, time_signature = _dataset_prime(args.data, args.prime_bars, rng)
        start, stem = None, "validation"
    else:
        raise EngineError("give a prime with --prime FILE.mid or a dataset with --data DIR")
    length = bar_length(time_signature)
    if start is None:
        last = max((n.onset for n in prime), default=-length)
        start = (math.floor(last / length) + 1) * length
    prime = [n for n in prime if n.onset < start]
    decoder = StyleDecoder(model, settings, allow_eos=False)
    gens = []
    for index in range(args.num_files):
        seed = None if args.seed is None else args.seed + index
        request = GenerateRequest(seed=tuple(prime), start_beat=start, bars=args.bars,
                                  time_signature=time_signature, style=style,
                                  sampling=SamplingParams(temperature=args.temperature,
                                                          top_k=args.top_k, top_p=args.top_p,
                                                          seed=seed))
        gens.append(decoder.start(f"file{index}", request))
    total = args.bars * len(gens)
    with tqdm(total=total, unit="bar", desc=f"generating ({style})") as bar:

        def show_bars() -> None:
            done_bars = sum(args.bars if g.done else max(0, g.grammar.bar - g.end_bar + args.bars)
                            for g in gens)
            bar.update(done_bars - bar.n)

        outputs = decoder.decode_until_done(gens, on_step=show_bars)
    out_dir = Path(args.output)
    tempo = args.tempo or tempo
    for index, (gen, notes) in enumerate(zip(gens, outputs, strict=True)):
        path = out_dir / f"{stem}_{style}_{index + 1:02d}.mid"
        _write(path, prime, notes, program=args.program, time_signature=time_signature,
               tempo=tempo, start=start)
        logger.info("wrote %s: %d notes after beat %g (%s, %d tokens)", path, len(notes), start,
                    gen.reason, gen.tokens)
        print(path)
    return 0
