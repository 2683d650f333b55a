import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from torchgraft.keys.regions import Box, Region, describe, split_key_region, uncovered

# --- parsing ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, items, canonical", [
    ("[:, :10]", ((None, None), (None, 10)), "[:, :10]"),
    ("[0:384]", ((0, 384),), "[0:384]"),
    ("[2]", (2,), "[2]"),
    ("[-1]", (-1,), "[-1]"),
    ("[..., 0:3]", ("...", (0, 3)), "[..., 0:3]"),
    ("[ 1 : 2 ,3 ]", ((1, 2), 3), "[1:2, 3]"),
    ("[-3:-1, ...]", ((-3, -1), "..."), "[-3:-1, ...]"),
    ("[0:5:1]", ((0, 5),), "[0:5]"),
    ("[::]", ((None, None),), "[:]"),
])
def test_parse_and_canonical_text(text, items, canonical):
    region = Region.parse(text)
    assert region.items == items
    assert str(region) == canonical


@pytest.mark.parametrize("text, reason", [
    ("[a:b]", "expected integers, start:stop slices, '...' or a bound {name}"),
    ("[1.5]", "expected integers, start:stop slices, '...' or a bound {name}"),
    ("[]", "expected integers, start:stop slices, '...' or a bound {name}"),
    ("[1,]", "expected integers, start:stop slices, '...' or a bound {name}"),
    ("[0:1:2:3]", "expected integers, start:stop slices, '...' or a bound {name}"),
    ("0:3", "expected integers, start:stop slices, '...' or a bound {name}"),
    ("[:, :10", "expected integers, start:stop slices, '...' or a bound {name}"),
    ("[::2]", "slice steps are not supported"),
    ("[0:4:-1]", "slice steps are not supported"),
    ("[..., ...]", "at most one '...' is allowed"),
])
def test_parse_errors(text, reason):
    with pytest.raises(ValueError) as err:
        Region.parse(text)
    assert str(err.value) == f"invalid region '{text}': {reason}"


def test_split_key_region():
    assert split_key_region("fc.weight[:, :10]") == ("fc.weight", Region(((None, None), (None, 10))))
    assert split_key_region("fc.weight") == ("fc.weight", None)
    assert split_key_region("blocks.{i}.qkv.weight[0:384]") == ("blocks.{i}.qkv.weight",
                                                                 Region(((0, 384),)))
    # a regex keeps its character classes
    assert split_key_region(r"re:layer[0-9]+\.w") == (r"re:layer[0-9]+\.w", None)


# --- resolving against a shape -------------------------------------------------------

def test_box_resolution():
    box = Region.parse("[:, :10]").box((4, 20))
    assert box == Box(((0, 4), (0, 10)), (True, True))
    assert box.shape == (4, 10)
    assert box.index() == (slice(0, 4), slice(0, 10))

    box = Region.parse("[1, ..., -2:]").box((2, 3, 4))
    assert box == Box(((1, 2), (0, 3), (2, 4)), (False, True, True))
    assert box.shape == (3, 2)
    assert box.index() == (1, slice(0, 3), slice(2, 4))

    assert Region.parse("[2]").box((5, 6)).bounds == ((2, 3), (0, 6))
    assert Region.parse("[...]").box(()) == Box((), ())
    assert Box.full((3, 4)) == Box(((0, 3), (0, 4)), (True, True))


@pytest.mark.parametrize("text, shape, message", [
    ("[:, :, 0]", (2, 3), "too many indices for a 2-d tensor: 3"),
    ("[0, ..., 0, 0]", (2, 3), "too many indices for a 2-d tensor: 3"),
    ("[0]", (), "too many indices for a 0-d tensor: 1"),
    ("[5]", (4,), "index 5 is out of bounds for dim 0 of size 4"),
    ("[4]", (4,), "index 4 is out of bounds for dim 0 of size 4"),
    ("[-5]", (4,), "index -5 is out of bounds for dim 0 of size 4"),
    ("[:, 0:20]", (4, 12), "slice 0:20 exceeds dim 1 of size 12"),
    ("[:, :20]", (4, 12), "slice :20 exceeds dim 1 of size 12"),
    ("[..., -13:]", (4, 12), "slice -13: exceeds dim 1 of size 12"),
    ("[5:3]", (8,), "slice 5:3 selects nothing in dim 0 of size 8"),
    ("[8:]", (8,), "slice 8: selects nothing in dim 0 of size 8"),
    ("[-2:-2]", (8,), "slice -2:-2 selects nothing in dim 0 of size 8"),
])
def test_box_errors(text, shape, message):
    with pytest.raises(ValueError) as err:
        Region.parse(text).box(shape)
    assert str(err.value) == message


def test_overlaps():
    a = Region.parse("[:, :10]").box((4, 20))
    assert a.overlaps(Region.parse("[:, 9:]").box((4, 20)))
    assert not a.overlaps(Region.parse("[:, 10:]").box((4, 20)))
    assert not Region.parse("[0]").box((4, 20)).overlaps(Region.parse("[1:]").box((4, 20)))


@st.composite
def shapes(draw, max_dims=3):
    return tuple(draw(st.lists(st.integers(1, 6), min_size=0, max_size=max_dims)))


@st.composite
def valid_regions(draw):
    """A shape and a region valid for it, written with every form the syntax allows."""
    shape = draw(shapes())
    items = []
    for size in shape:
        if draw(st.booleans()):
            index = draw(st.integers(0, size - 1))
            items.append(index - size if draw(st.booleans()) else index)
            continue
        start, stop = sorted(draw(st.lists(st.integers(0, size), min_size=2, max_size=2,
                                           unique=True)))
        items.append((_written(draw, start, 0, size), _written(draw, stop, size, size)))
    if items and draw(st.booleans()):  # '...' stands for a run of items
        lo = draw(st.integers(0, len(items)))
        hi = draw(st.integers(lo, len(items)))
        items[lo:hi] = ["..."]
    elif draw(st.booleans()):  # trailing items may be left out
        del items[draw(st.integers(0, len(items))):]
    if not items:
        items = ["..."]
    return shape, Region(tuple(items))


def _written(draw, bound, default, size):
    """One way to write ``bound``: omitted (if it is the default), positive or negative."""
    forms = [bound] + ([bound - size] if bound < size else [])
    forms += [None] if bound == default else []
    return draw(st.sampled_from(forms))


def _numpy_index(region):
    return tuple(Ellipsis if item == "..." else item if isinstance(item, int) else slice(*item)
                 for item in region.items)


@given(valid_regions())
def test_box_agrees_with_numpy(case):
    shape, region = case
    array = np.arange(int(np.prod(shape))).reshape(shape)
    box = region.box(shape)
    assert box.shape == np.empty(shape)[box.index()].shape
    np.testing.assert_array_equal(array[box.index()], array[_numpy_index(region)])


@given(valid_regions())
def test_text_round_trips(case):
    shape, region = case
    assert Region.parse(str(region)) == region
    box = region.box(shape)
    assert Region.parse(describe(box, shape)).box(shape) == box


# --- describe --------------------------------------------------------------------------

@pytest.mark.parametrize("bounds, kept, text", [
    (((0, 4), (10, 20)), (True, True), "[:, 10:]"),
    (((0, 2), (0, 20)), (True, True), "[:2]"),
    (((0, 4), (0, 20)), (True, True), "[:]"),
    (((1, 3), (5, 10)), (True, True), "[1:3, 5:10]"),
    (((2, 3), (0, 20)), (False, True), "[2]"),
    (((0, 4), (7, 8)), (True, False), "[:, 7]"),
])
def test_describe(bounds, kept, text):
    assert describe(Box(bounds, kept), (4, 20)) == text


def test_describe_scalar():
    assert describe(Box.full(()), ()) == "[...]"


# --- uncovered -------------------------------------------------------------------------

def test_uncovered_examples():
    shape = (4, 20)
    assert uncovered(shape, []) == [Box.full(shape)]
    assert uncovered(shape, [Box.full(shape)]) == []
    left = Region.parse("[:, :10]").box(shape)
    assert uncovered(shape, [left]) == [Box(((0, 4), (10, 20)), (True, True))]
    rows = [Region.parse(f"[{i}]").box(shape) for i in (0, 1, 3)]
    assert uncovered(shape, rows) == [Box(((2, 3), (0, 20)), (True, True))]
    # a hole in the middle leaves a frame
    hole = uncovered((4, 4), [Region.parse("[1:3, 1:3]").box((4, 4))])
    assert [describe(b, (4, 4)) for b in hole] == ["[:1]", "[1:3, :1]", "[1:3, 3:]", "[3:]"]
    assert uncovered((0, 3), []) == []


def test_uncovered_rejects_boxes_of_another_rank():
    with pytest.raises(ValueError):
        uncovered((4, 4), [Box.full((4,))])


@st.composite
def boxes_in(draw, shape):
    bounds, kept = [], []
    for size in shape:
        start, stop = sorted(draw(st.lists(st.integers(0, size), min_size=2, max_size=2,
                                           unique=True)))
        as_int = stop == start + 1 and draw(st.booleans())
        bounds.append((start, stop))
        kept.append(not as_int)
    return Box(tuple(bounds), tuple(kept))


@st.composite
def coverings(draw):
    shape = draw(shapes(max_dims=4))
    return shape, draw(st.lists(boxes_in(shape), max_size=5))


@given(coverings())
def test_uncovered_partitions_the_tensor(case):
    """Given boxes plus uncovered parts cover every element, and the uncovered parts
    are disjoint from each other and from the given boxes."""
    shape, given_boxes = case
    covered = np.zeros(shape, dtype=bool)
    for box in given_boxes:
        covered[tuple(slice(a, b) for a, b in box.bounds)] = True
    rest = uncovered(shape, given_boxes)
    count = np.zeros(shape, dtype=int)
    for box in rest:
        assert all(box.kept)
        assert all(0 <= a < b <= n for (a, b), n in zip(box.bounds, shape))
        count[box.index()] += 1
    assert not (count > 1).any()
    np.testing.assert_array_equal(count == 1, ~covered)
    assert rest == sorted(rest, key=lambda b: b.bounds)
    assert uncovered(shape, given_boxes) == rest
