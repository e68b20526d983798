"""What the decoder fuzzers share: byte-level mutations of a valid message and arbitrary msgpack values.

``tests/test_crypto_envelope.py`` (quick, random) and ``tests/test_fuzz_decoders.py`` (slow, derandomised) fuzz
the same envelope decoder with the same mutations; only the number of examples and the sizes differ.
"""

from __future__ import annotations

from hypothesis import strategies as st

# positions and cuts are fractions of the span, so one example means the same edit on a message of any length
CUTS = st.none() | st.floats(0.0, 1.0)
INSERTS = st.none() | st.tuples(st.floats(0.0, 1.0), st.binary(min_size=1, max_size=16))
# every header field of an envelope lives in its first 400 bytes
HEADER_SPAN = 400


def byte_edits(*, min_size: int, max_size: int) -> st.SearchStrategy[list[tuple[float, int]]]:
    """Overwrites: (where, as a fraction of the span; the new byte value)."""
    return st.lists(
        st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255)), min_size=min_size, max_size=max_size
    )


def mutate(
    valid: bytes,
    edits: list[tuple[float, int]],
    cut: float | None,
    insert: tuple[float, bytes] | None,
    *,
    near_header: bool,
) -> bytes:
    """``valid`` with bytes overwritten, a run inserted and the tail cut; ``near_header`` aims edits and the
    insertion at the header (half of the examples, where every field lives)."""
    data = bytearray(valid)
    span = HEADER_SPAN if near_header else len(data)
    for where, value in edits:
        data[int(where * span)] = value
    if insert is not None:
        at = int(insert[0] * span)
        data[at:at] = insert[1]
    if cut is not None:
        del data[int(cut * len(data)) :]
    return bytes(data)


def msgpack_values(*, max_size: int, max_leaves: int) -> st.SearchStrategy[object]:
    """Any value msgpack can carry, nested in lists and maps: what a hostile sender can put in a field."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats()
        | st.text(max_size=max_size)
        | st.binary(max_size=max_size)
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=max_leaves,
    )
