"""``melody data``: build token datasets and list the bundled corpora.

    melody data build --source SRC[,SRC...] [--source SRC ...] [--exclude SRC]
                      --out DIR [--data-root DIR] [--jobs N] [--monophonic]
                      [--transpose -5..6] [--val-fraction 0.1] [--seed 0]
                      [--convert-timeout S] [--config PATH]
                      [--tokenizer FILE] [--style NAME]
    melody data corpora [--data-root DIR] [--convert] [--jobs N]

SRC is a folder of MIDI / MusicXML / kern / ABC files, ``corpus:NAME`` (music21's bundled
scores), a named corpus of the data root (``lieder``, ``quartets``, ``chopin``,
``polish-piano``, ``polish-songs``, ``pop909``), or ``all-corpora``: every named corpus
under the data root plus ``corpus:all``. Several sources make one dataset; each piece keeps
its style and roles, and its name is prefixed by its source (``lieder:...``).

The style- and role-conditioned vocabulary of the one-model recipe is
``--config models/pretrained/conditioned-tokens.toml``. ``--tokenizer FILE`` builds with a
saved vocabulary instead (``MelodyTokenizer.save``: a model's own, so that the dataset
fine-tunes it), and ``--style NAME`` labels every piece with one style, which takes the
next free style slot when the vocabulary does not name it yet (``melody add-style``).

Defaults come from ``[data]`` (and ``[tokens]``) of config.toml; flags override them.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from models.core.settings import load_settings
from models.core.tokenizer import MelodyTokenizer
from models.data.data_tables import format_data_table, format_skip_table
from models.data.dataset import build_dataset
from models.data.manifest import SPLITS
from models.data.sources import ALL_CORPORA
from models.data.transpose import parse_transpose

HELP = "build token datasets from MIDI/score folders or named corpora; list the corpora"

# argparse takes "-5..6" for an option flag; let it through as a value.
_NEGATIVE_VALUE = re.compile(r"^-\d+$|^-\d*\.\d+$|^-\d+\.\.-?\d+$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``build`` and ``corpora`` subcommands."""
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    build = sub.add_parser("build", help="tokenize MIDI files into a dataset folder")
    build._negative_number_matcher = _NEGATIVE_VALUE  # see _NEGATIVE_VALUE
    build.add_argument("--source", required=True, action="append",
                       help="a folder of MIDI/MusicXML/kern/ABC files (recursive), "
                            "corpus:NAME, a named corpus (lieder, pop909, ...), or "
                            f"{ALL_CORPORA} (every named corpus under the data root plus "
                            "corpus:all); repeat it or give a comma list for one dataset "
                            "from several sources")
    build.add_argument("--exclude", action="append", default=[], metavar="SRC",
                       help=f"leave out a source (e.g. {ALL_CORPORA} --exclude quartets); "
                            "repeatable or a comma list")
    build.add_argument("--data-root", metavar="DIR",
                       help="folder of the named corpora (overrides [data] data_root)")
    build.add_argument("--convert-timeout", type=float, metavar="S",
                       help="seconds allowed to convert one score file (0 = no limit)")
    build.add_argument("--out", required=True, help="dataset folder to write")
    build.add_argument("--jobs", type=int, help="worker processes (0 = one per core)")
    build.add_argument("--monophonic", action="store_true", default=None,
                       help="skip pieces with more than one note sounding at once")
    build.add_argument("--transpose", metavar="A..B",
                       help="transpose training pieces by A..B semitones, e.g. -5..6")
    build.add_argument("--val-fraction", type=float, help="fraction of pieces for validation")
    build.add_argument("--test-fraction", type=float, help="fraction of pieces for test")
    build.add_argument("--seed", type=int, help="seed of the piece split")
    build.add_argument("--config", help="a config.toml merged over the defaults")
    build.add_argument("--tokenizer", metavar="FILE",
                       help="a saved tokenizer configuration (JSON) to build with instead "
                            "of [tokens], e.g. the vocabulary of a model to fine-tune")
    build.add_argument("--style", metavar="NAME",
                       help="label every piece with this style (in place of its source's); "
                            "a conditioned vocabulary gives it the next free style slot")
    build.add_argument("--no-progress", action="store_true", help="hide progress bars")

    corpora = sub.add_parser("corpora", help="list the named and bundled corpora")
    corpora.add_argument("--data-root", metavar="DIR",
                         help="folder of the named corpora (overrides [data] data_root)")
    corpora.add_argument("--convert", action="store_true",
                         help="convert every corpus to MIDI now (cached; takes minutes)")
    corpora.add_argument("--jobs", type=int, default=0, help="worker processes (0 = one per core)")
    corpora.add_argument("--config", help="a config.toml merged over the defaults")


def run(args: argparse.Namespace) -> int:
    """Run ``data build`` or ``data corpora``."""
    if args.data_command == "build":
        return _build(args)
    return _corpora(args)


def _build(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {
        "jobs": args.jobs, "monophonic": args.monophonic, "val_fraction": args.val_fraction,
        "test_fraction": args.test_fraction, "seed": args.seed,
        "data_root": args.data_root, "convert_timeout": args.convert_timeout,
    }
    if args.transpose is not None:
        overrides["transpose_min"], overrides["transpose_max"] = parse_transpose(args.transpose)
    settings = load_settings(args.config, overrides={"data": overrides})
    if args.tokenizer:
        tokenizer = MelodyTokenizer.load(args.tokenizer)
    else:
        tokenizer = MelodyTokenizer(settings.tokens)
    manifest = build_dataset(args.source, args.out, settings.data, tokenizer,
                             progress=not args.no_progress, exclude=args.exclude,
                             style=args.style)
    for line in format_skip_table(manifest):
        print(line)
    if len(manifest["sources"]) > 1:
        print(f"sources: {manifest['source']}")
    print(f"dataset {args.out} ({manifest['build_seconds']:.1f} s, "
          f"hash {manifest['content_hash'][:12]})")
    print(f"  {'split':<11}{'pieces':>8}{'sequences':>11}{'notes':>12}{'tokens':>13}")
    for split in SPLITS:
        info = manifest["splits"][split]
        print(f"  {split:<11}{info['num_pieces']:>8}{info['num_sequences']:>11}"
              f"{info['notes']:>12}{info['tokens']:>13}")
    styles = ", ".join(f"{k} {v}" for k, v in sorted(manifest["styles"].items()))
    print(f"styles: {styles}; licences: {'; '.join(manifest['licences']) or 'unknown'}; "
          f"conversion {manifest['convert_seconds']:.1f} s")
    for line in format_data_table(manifest):
        print(line)
    slots = MelodyTokenizer.from_dict(manifest["tokenizer"]).style_slots
    if slots:
        print("style slots: " + ", ".join(f"{k} {name}" for name, k in slots.items()))
    return 0


def _corpora(args: argparse.Namespace) -> int:
    from models.data.corpus import CORPORA, convert_collections, corpus_summary  # noqa: PLC0415
    from models.data.data_root import named_summary  # noqa: PLC0415

    settings = load_settings(args.config, overrides={"data": {"data_root": args.data_root}})
    data_root = settings.data.data_root
    unset = "not set: --data-root DIR or [data] data_root"
    print(f"named corpora (data root: {data_root or unset})")
    print(f"  {'corpus':<14}{'files':>7}{'pieces':>8}{'notes':>10}  licence")
    for row in named_summary(data_root):
        if row["available"]:
            pieces = "-" if row["pieces"] is None else str(row["pieces"])
            notes = "-" if row["notes"] is None else str(row["notes"])
            counts = f"{row['files']:>7}{pieces:>8}{notes:>10}"
        else:
            counts = f"{'missing':>25}"
        print(f"  {row['name']:<14}{counts}  {row['licence']}")
        print(f"  {'':<14}{row['description']}; from {row['origin']}")
    print("  (files: found under the data root; pieces, notes: once converted into the cache)")
    if args.convert:
        names = sorted({c for spec in CORPORA.values() for c in spec.collections})
        convert_collections(names, args.jobs or settings.data.jobs,
                            timeout=settings.data.convert_timeout)
    print(f"\nbundled corpora (music21)\n{'corpus':<20}{'pieces':>8}{'notes':>11}  description")
    rows = corpus_summary()
    for row in rows:
        if row["converted"]:
            counts = f"{row['pieces']:>8}{row['notes']:>11}"
        elif row["converted_collections"]:
            done = f"{row['converted_collections']}/{len(row['collections'])} converted"
            counts = f"{'not converted yet':>19}  ({done})"
        else:
            counts = f"{'not converted yet':>19}"
        print(f"{row['name']:<20}{counts}  {row['description']}")
    print("\nmusic21 collections of each corpus:")
    for row in rows:
        print(f"  {row['name']:<20}{', '.join(row['collections'])}")
    if not all(row["converted"] for row in rows):
        print("\n(`melody data corpora --convert` converts them now; `melody data build "
              "--source corpus:NAME` converts what it needs)")
    return 0
