"""The ``--transpose`` range's parsing."""

from __future__ import annotations

import pytest

from models.core.exceptions import DataError
from models.data.transpose import parse_transpose


@pytest.mark.parametrize(("text", "expected"), [
    ("-5..6", (-5, 6)), ("0..0", (0, 0)), ("3", (-3, 3)), ("-12..12", (-12, 12)),
])
def test_parse_transpose(text: str, expected: tuple[int, int]) -> None:
    assert parse_transpose(text) == expected


@pytest.mark.parametrize("text", ["5..-6", "a..b", "-13..0", "1..2", "-5:6"])
def test_parse_transpose_rejects_bad_ranges(text: str) -> None:
    with pytest.raises(DataError, match=text.replace(".", r"\.")):
        parse_transpose(text)
