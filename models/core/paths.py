"""Where melodyd's own files live: the packaged defaults, the shipped styles.

One place for these paths, so the engine, the bridge and the tools always agree on which
styles folder is meant. Works from a checkout and from an installed wheel (both keep
``models/`` beside ``engine/`` and ``bridge/``).
"""

from __future__ import annotations

from pathlib import Path

# The folder that holds the packages (the repository root in a checkout, site-packages
# in a wheel).
PACKAGES_ROOT = Path(__file__).resolve().parents[2]
PRETRAINED_DIR = PACKAGES_ROOT / "models" / "pretrained"
# The shipped checkpoints, in the styles folder. ``any.onnx``'s own (the style- and
# role-conditioned model, fp16 weights): where `melody add-style` starts a new style token.
CONDITIONED_CHECKPOINT_NAME = "conditioned.pt"
# The earlier unconditioned small base: what `melody train-styles` builds and fine-tunes.
BASE_CHECKPOINT_NAME = "base.pt"
DEFAULT_RECIPE = PRETRAINED_DIR / "recipe.toml"


def default_config_path() -> Path:
    """The packaged defaults: ``models/config.toml`` in a wheel, else the checkout's root."""
    installed = PACKAGES_ROOT / "models" / "config.toml"
    if installed.is_file():
        return installed
    return PACKAGES_ROOT / "config.toml"


def styles_directory(configured: str = "", explicit: Path | str | None = None) -> Path:
    """The folder of installed ``<style>.onnx`` files.

    Args:
        configured: the ``[styles] directory`` setting ("" for none).
        explicit: a folder named on the command line; it wins over the setting.

    Returns:
        ``explicit``, else the setting, else the shipped ``models/pretrained``.
    """
    if explicit:
        return Path(explicit).expanduser()
    if configured:
        return Path(configured).expanduser()
    return PRETRAINED_DIR
