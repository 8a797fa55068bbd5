"""Training windows for a style-conditioned vocabulary: balanced styles, style dropout."""

from __future__ import annotations

import numpy as np
import pytest

from models.core.exceptions import DataError

torch = pytest.importorskip("torch", reason="training windows are torch tensors")

from models.train.batches import WindowBatches, style_weights  # noqa: E402

BOS, EOS, STYLES = 1, 2, (100, 101, 102)  # Style_0 (any), Style_1, Style_2


def _stream(pieces: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Pieces of ``(style id, length)``: ``BOS Style body... EOS`` with a body id per piece."""
    tokens, offsets = [], [0]
    for index, (style, length) in enumerate(pieces):
        tokens += [BOS, style] + [10 + index] * (length - 3) + [EOS]
        offsets.append(len(tokens))
    return np.asarray(tokens, dtype=np.uint16), np.asarray(offsets, dtype=np.int64)


# Style 1 has nine times the tokens of style 2.
PIECES = [(101, 300)] * 9 + [(102, 300)]


def test_weights_give_each_style_the_same_share() -> None:
    tokens, offsets = _stream(PIECES)
    weights = style_weights(tokens, offsets, STYLES)
    assert weights[:9].sum() == pytest.approx(0.5)
    assert weights[9] == pytest.approx(0.5)


def test_a_power_between_0_and_1_tempers_the_balance() -> None:
    tokens, offsets = _stream(PIECES)
    natural = style_weights(tokens, offsets, STYLES, power=1.0)
    assert natural[9] == pytest.approx(0.1)  # its share of the tokens
    tempered = style_weights(tokens, offsets, STYLES, power=0.5)
    assert tempered[9] == pytest.approx(1 / (1 + 3))  # sqrt(1) / (sqrt(9) + sqrt(1))
    assert tempered.sum() == pytest.approx(1.0)


def test_balanced_windows_draw_a_rare_style_as_often_as_a_common_one() -> None:
    tokens, offsets = _stream(PIECES)
    balanced = WindowBatches(tokens, 16, offsets=offsets, style_ids=STYLES, balance=True)
    uniform = WindowBatches(tokens, 16)
    rare = {"balanced": 0, "uniform": 0}
    for step in range(50):
        for name, windows in (("balanced", balanced), ("uniform", uniform)):
            inputs, _ = windows.train_batch(step, 32, seed=1)
            rare[name] += int((inputs == 10 + 9).any(dim=1).sum())
    total = 50 * 32
    assert 0.4 < rare["balanced"] / total < 0.6
    assert rare["uniform"] / total < 0.2


def test_the_uniform_draw_is_unchanged_by_the_new_options() -> None:
    tokens, offsets = _stream(PIECES)
    plain = WindowBatches(tokens, 16).train_batch(3, 8, seed=5)
    same = WindowBatches(tokens, 16, offsets=offsets, style_ids=STYLES).train_batch(3, 8, 5)
    assert torch.equal(plain[0], same[0]) and torch.equal(plain[1], same[1])


def test_style_dropout_replaces_style_tokens_by_slot_0() -> None:
    tokens, offsets = _stream([(101, 20), (102, 20)] * 20)
    windows = WindowBatches(tokens, 24, offsets=offsets, style_ids=STYLES, style_dropout=0.5)
    kept = dropped = 0
    for step in range(40):
        inputs, targets = windows.train_batch(step, 16, seed=2)
        # Targets are the inputs shifted by one: the same tokens, altered alike.
        assert torch.equal(inputs[:, 1:], targets[:, :-1])
        kept += int(torch.isin(inputs, torch.tensor([101, 102])).sum())
        dropped += int((inputs == 100).sum())
    assert dropped > 0 and kept > 0
    assert 0.3 < dropped / (kept + dropped) < 0.7
    # Evaluation windows are never altered.
    for inputs, _ in windows.eval_batches(8, max_batches=4):
        assert not (inputs == 100).any()
    # Same arguments, same windows.
    again = windows.train_batch(7, 16, seed=2)
    assert torch.equal(again[0], windows.train_batch(7, 16, seed=2)[0])


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"style_dropout": 0.2}, "style tokens"),
    ({"style_ids": STYLES, "style_dropout": 1.5}, "received 1.5"),
    ({"balance": True}, "offsets"),
])
def test_bad_options_are_refused(kwargs, needle) -> None:
    tokens, _ = _stream(PIECES)
    with pytest.raises(DataError, match=needle):
        WindowBatches(tokens, 16, **kwargs)


def test_windows_inside_a_piece_start_with_its_bos_and_style() -> None:
    tokens, offsets = _stream([(101, 60), (102, 60)] * 5)
    windows = WindowBatches(tokens, 12, offsets=offsets, style_ids=STYLES, keep_heads=True)
    plain = WindowBatches(tokens, 12)
    seen = 0
    for step in range(30):
        inputs, targets = windows.train_batch(step, 16, seed=4)
        raw_inputs, raw_targets = plain.train_batch(step, 16, seed=4)
        for row in range(16):
            body = int(raw_inputs[row, 2])
            piece = body - 10 if body >= 10 else None
            head = raw_inputs[row, :3].tolist()
            if piece is None or any(t in (BOS, EOS, *STYLES) for t in head):
                # At (or within two tokens of) a piece's start: already has a head.
                assert torch.equal(inputs[row], raw_inputs[row])
                continue
            seen += 1
            style = PIECE_STYLE[piece % 2]
            assert inputs[row, :2].tolist() == [BOS, style]
            assert targets[row, 0] == style
            # From the third token on, the piece's own text, predicted as before.
            assert torch.equal(inputs[row, 2:], raw_inputs[row, 2:])
            assert torch.equal(targets[row, 1:], raw_targets[row, 1:])
    assert seen > 50


PIECE_STYLE = (101, 102)


def test_kept_heads_need_offsets() -> None:
    tokens, _ = _stream(PIECES)
    with pytest.raises(DataError, match="offsets"):
        WindowBatches(tokens, 16, keep_heads=True)


@pytest.mark.parametrize("slots", [0, 4], ids=["old-vocabulary", "conditioned"])
def test_a_run_on_a_conditioned_dataset_balances_and_keeps_heads(tmp_path, slots) -> None:
    import symusic  # noqa: PLC0415

    from models.core.settings import DataSettings, TokensSettings, TrainSettings  # noqa: PLC0415
    from models.core.tokenizer import MelodyTokenizer  # noqa: PLC0415
    from models.data.dataset import build_dataset  # noqa: PLC0415
    from models.train.build import load_run_data  # noqa: PLC0415

    for index in range(8):
        score = symusic.Score(480)
        score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
        track = symusic.Track(name="lead", program=0, is_drum=False)
        for k in range(16):
            track.notes.append(symusic.Note(k * 240, 200, 60 + (k * (index + 1)) % 12, 80))
        score.tracks.append(track)
        score.dump_midi(str(tmp_path / f"tune{index}.mid"))
    tokenizer = MelodyTokenizer(TokensSettings(style_slots=slots, roles=bool(slots)))
    build_dataset(str(tmp_path), tmp_path / "out", DataSettings(jobs=1), tokenizer,
                  progress=False)
    run = load_run_data(tmp_path / "out", 32, TrainSettings(style_dropout=0.25))
    assert run.train.keep_heads is bool(slots)
    assert (run.train.weights is not None) is bool(slots)
    assert run.train.style_dropout == (0.25 if slots else 0.0)
    assert not run.validation.keep_heads and run.validation.style_dropout == 0.0
