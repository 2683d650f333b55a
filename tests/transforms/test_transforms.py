"""Transforms: the shape (and dtype) a transform promises at plan time is the shape its
tensor function produces, over random shapes; each transform computes what it claims;
bad arguments fail with their exact message."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from torchgraft.core.errors import RecipeError
from torchgraft.core.tensors import dtype_name
from torchgraft.transforms import compile_transform, compile_transforms, describe

FLOATS = ["float32", "float64", "bfloat16", "float16"]
dims = st.integers(min_value=0, max_value=5)
positive = st.integers(min_value=1, max_value=5)


def check(spec, shape, dtype="float32", initial=None):
    """Shape and dtype rules agree with what the tensor function makes."""
    transform = compile_transform(spec, "t")
    try:
        expected_shape, expected_dtype = transform.out_shape(tuple(shape)), transform.out_dtype(dtype)
    except ValueError:
        return None  # refused at plan time: nothing to compare
    tensor = torch.randn(shape, dtype=torch.float64).to(getattr(torch, dtype))
    made = transform.apply(tensor, (lambda: initial(expected_shape)) if initial else None)
    assert tuple(made.shape) == tuple(expected_shape), (spec, shape)
    assert dtype_name(made.dtype) == expected_dtype, (spec, dtype)
    return made


# --- property: inferred shape == produced shape, for every transform ------------------------

PROPERTY = settings(deadline=None)


@PROPERTY
@given(st.lists(dims, min_size=0, max_size=4), st.sampled_from(FLOATS))
def test_transpose_shape(shape, dtype):
    made = check("transpose", shape, dtype)
    if len(shape) < 2:
        assert made is None  # refused at plan time: it swaps the last two dimensions
    else:
        assert made is not None and list(made.shape) == [*shape[:-2], shape[-1], shape[-2]]


@PROPERTY
@given(st.lists(dims, min_size=1, max_size=4).flatmap(lambda s: st.tuples(st.just(s), st.permutations(range(len(s))))))
def test_permute_shape(case):
    shape, order = case
    made = check({"permute": list(order)}, shape)
    assert made is not None and list(made.shape) == [shape[i] for i in order]


@PROPERTY
@given(st.lists(dims, min_size=1, max_size=4), st.data())
def test_reshape_shape(shape, data):
    target = data.draw(st.permutations(shape))
    if data.draw(st.booleans()) and target:
        target[data.draw(st.integers(0, len(target) - 1))] = -1
    made = check({"reshape": list(target)}, shape)
    if made is not None:
        assert made.numel() == math.prod(shape)


@PROPERTY
@given(st.lists(dims, max_size=3), st.sampled_from(FLOATS + ["int64", "int8", "bool"]), st.sampled_from(FLOATS + ["int32"]))
def test_cast_shape_and_dtype(shape, to, start):
    made = check({"cast": to}, shape, start)
    assert made is not None and dtype_name(made.dtype) == to


@PROPERTY
@given(st.lists(dims, max_size=3), st.sampled_from(FLOATS), st.floats(-4, 4, allow_nan=False))
def test_scale_shape(shape, dtype, factor):
    made = check({"scale": factor}, shape, dtype)
    assert made is not None and list(made.shape) == shape


@st.composite
def position_embeddings(draw):
    """(spec, shape): [*lead, prefix + grid, channels] with a 1-D or 2-D grid."""
    two_d = draw(st.booleans())
    old = draw(st.lists(positive, min_size=2 if two_d else 1, max_size=2 if two_d else 1))
    new = draw(st.lists(st.integers(1, 7), min_size=len(old), max_size=len(old)))
    prefix = draw(st.integers(0, 2))
    lead = draw(st.lists(st.integers(1, 2), max_size=2))
    square = two_d and old[0] == old[1]
    spec = {"size": new, "prefix_tokens": prefix, "mode": draw(st.sampled_from(
        ["bicubic", "bilinear", "nearest", "area", "nearest-exact"] if two_d else ["linear", "nearest", "area"]))}
    if not square or draw(st.booleans()):
        spec["old_size"] = old
    return {"interpolate": spec}, [*lead, prefix + math.prod(old), draw(positive)]


@PROPERTY
@given(position_embeddings(), st.sampled_from(FLOATS))
def test_interpolate_shape(case, dtype):
    spec, shape = case
    assert check(spec, shape, dtype) is not None


@PROPERTY
@given(positive, positive, st.lists(st.integers(1, 3), max_size=3), st.integers(1, 8), st.sampled_from(FLOATS))
def test_adapt_channels_shape(out, channels, kernel, n, dtype):
    assert check({"adapt_channels": n}, [out, channels, *kernel], dtype) is not None


@PROPERTY
@given(st.lists(dims, min_size=1, max_size=3), st.integers(0, 4), st.sampled_from(["init", "mean", "zeros"]),
       st.sampled_from(FLOATS))
def test_pad_rows_shape(shape, grow, fill, dtype):
    spec = {"pad_rows": {"to": max(shape[0] + grow, 1), "fill": fill}}
    made = check(spec, shape, dtype, initial=lambda s: torch.randn(s))
    assert made is not None or (fill == "mean" and shape[0] == 0)


@PROPERTY
@given(st.lists(st.integers(1, 4), min_size=2, max_size=3))
def test_a_chain_composes(shape):
    specs = ["transpose", {"scale": 2.0}, {"reshape": [-1]}, {"pad_rows": {"to": math.prod(shape) + 3, "fill": "zeros"}}]
    chain = compile_transforms(specs, "t")
    inferred = tuple(shape)
    value = torch.randn(shape)
    for transform in chain:
        inferred = transform.out_shape(inferred)
        value = transform.apply(value)
    assert tuple(value.shape) == inferred == (math.prod(shape) + 3,)


# --- what each transform computes ------------------------------------------------------------

def timm_style_resample(posemb: torch.Tensor, new: list[int], prefix: int) -> torch.Tensor:
    """timm's resample_abs_pos_embed, written out independently for the comparison."""
    head, grid = posemb[:, :prefix], posemb[:, prefix:]
    side = int(math.sqrt(grid.shape[1]))
    grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new, mode="bicubic", antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, posemb.shape[-1]).to(posemb.dtype)
    return torch.cat([head, grid], dim=1)


def test_interpolate_resamples_the_grid_and_keeps_prefix_tokens():
    torch.manual_seed(0)
    posemb = torch.randn(1, 1 + 16, 8)
    out = compile_transform({"interpolate": {"size": [6, 6], "prefix_tokens": 1}}, "t").apply(posemb)
    assert out.shape == (1, 37, 8)
    assert torch.equal(out[:, :1], posemb[:, :1])
    assert torch.equal(out, timm_style_resample(posemb, [6, 6], 1))


def test_interpolate_matches_timm_when_installed():
    layers = pytest.importorskip("timm.layers")
    posemb = torch.randn(1, 2 + 49, 16)
    ours = compile_transform({"interpolate": {"size": [10, 12], "prefix_tokens": 2}}, "t").apply(posemb)
    torch.testing.assert_close(ours, layers.resample_abs_pos_embed(posemb, [10, 12], num_prefix_tokens=2))


def test_interpolate_same_grid_is_identity_and_2d_tables_work():
    table = torch.randn(1 + 9, 4)  # CLIP-style [positions, channels], no batch dim
    same = compile_transform({"interpolate": {"size": [3, 3], "prefix_tokens": 1}}, "t")
    assert same.apply(table) is table
    grown = compile_transform({"interpolate": {"size": [5, 5], "prefix_tokens": 1}}, "t").apply(table)
    assert grown.shape == (26, 4) and torch.equal(grown[0], table[0])


def test_interpolate_1d_linear_and_a_non_square_grid():
    table = torch.arange(8.0).reshape(1, 4, 2)  # 4 positions, linear in the position
    out = compile_transform({"interpolate": {"size": [7]}}, "t").apply(table)
    assert describe(compile_transform({"interpolate": {"size": [7]}}, "t").spec) == \
        "interpolate(size=[7], mode=linear, prefix_tokens=0, antialias=false)"
    assert out.shape == (1, 7, 2) and out[0, 0, 0] == 0 and out[0, -1, 0] == 6
    rect = torch.randn(1, 2 * 3, 5)
    spec = {"interpolate": {"size": [4, 6], "old_size": [2, 3], "mode": "nearest"}}
    near = compile_transform(spec, "t").apply(rect)
    assert torch.equal(near.reshape(4, 6, 5)[::2, ::2], rect.reshape(2, 3, 5))


def test_interpolate_bfloat16_is_computed_in_float32():
    posemb = torch.randn(1, 16, 4)
    spec = {"interpolate": {"size": [2, 2], "mode": "bilinear"}}
    low = compile_transform(spec, "t").apply(posemb.bfloat16())
    assert low.dtype == torch.bfloat16
    assert torch.equal(low, compile_transform(spec, "t").apply(posemb.bfloat16().float()).bfloat16())


def test_adapt_channels_to_one_channel_sums_rgb():
    conv = torch.nn.Conv2d(3, 4, 3)
    gray = torch.nn.Conv2d(1, 4, 3)
    with torch.no_grad():
        gray.weight.copy_(compile_transform({"adapt_channels": 1}, "t").apply(conv.weight))
        gray.bias.copy_(conv.bias)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(gray(x), conv(x.expand(-1, 3, -1, -1)))


def test_adapt_channels_to_n_repeats_and_rescales():
    w = torch.randn(4, 3, 3, 3)
    six = compile_transform({"adapt_channels": 6}, "t").apply(w)
    torch.testing.assert_close(six, torch.cat([w, w], dim=1) * 0.5)
    x = torch.randn(1, 3, 8, 8)  # the input twice over gives the original response
    torch.testing.assert_close(F.conv2d(torch.cat([x, x], 1), six), F.conv2d(x, w))
    four = compile_transform({"adapt_channels": 4}, "t").apply(w)
    torch.testing.assert_close(four, torch.cat([w, w[:, :1]], dim=1) * 0.75)  # timm: repeat, cut, scale 3/4
    assert compile_transform({"adapt_channels": 3}, "t").apply(w) is w


def test_pad_rows_fills():
    rows = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    init = torch.full((4, 2), 9.0)
    pad = lambda fill: compile_transform({"pad_rows": {"to": 4, "fill": fill}}, "t").apply(rows, lambda: init)
    assert pad("init").tolist() == [[1, 2], [3, 6], [9, 9], [9, 9]]
    assert pad("mean").tolist() == [[1, 2], [3, 6], [2, 4], [2, 4]]
    assert pad("zeros").tolist() == [[1, 2], [3, 6], [0, 0], [0, 0]]
    assert compile_transform({"pad_rows": {"to": 4}}, "t").spec == {"pad_rows": {"to": 4, "fill": "init"}}
    ints = compile_transform({"pad_rows": {"to": 3, "fill": "zeros"}}, "t").apply(torch.tensor([5, 6]))
    assert ints.tolist() == [5, 6, 0] and ints.dtype == torch.int64


def test_describe():
    assert describe("transpose") == "transpose"
    assert describe({"scale": 0.5}) == "scale(0.5)"
    assert describe({"permute": [1, 0, 2]}) == "permute([1, 0, 2])"
    assert describe({"pad_rows": {"fill": "mean", "to": 8}}) == "pad_rows(to=8, fill=mean)"  # key-sorted JSON reads back
    assert describe({"interpolate": {"antialias": True, "mode": "bicubic", "prefix_tokens": 1, "size": [6, 6]}}) == \
        "interpolate(size=[6, 6], mode=bicubic, prefix_tokens=1, antialias=true)"


# --- shape rules refuse what cannot work, with the reason ----------------------------------------

@pytest.mark.parametrize("spec, shape, dtype, message", [
    ({"interpolate": {"size": [6, 6]}}, [1, 17, 8], "float32",
     "interpolate: 17 positions after 0 prefix tokens do not form a square grid "
     "(set prefix_tokens, or old_size for a non-square grid)"),
    ({"interpolate": {"size": [6, 6], "prefix_tokens": 1, "old_size": [4, 5]}}, [1, 17, 8], "float32",
     "interpolate: old_size [4, 5] holds 20 positions, but the tensor has 16 after 1 prefix token"),
    ({"interpolate": {"size": [6], "prefix_tokens": 3}}, [3, 8], "float32",
     "interpolate: 3 positions leave no grid after 3 prefix tokens"),
    ({"interpolate": {"size": [6]}}, [8], "float32",
     "interpolate needs a non-empty [..., positions, channels] tensor, got shape [8]"),
    ({"interpolate": {"size": [6]}}, [4, 8], "int64", "interpolate needs a floating-point tensor, got int64"),
    ({"adapt_channels": 1}, [8], "float32", "adapt_channels needs a weight [out, in, ...] with in > 0, got shape [8]"),
    ({"pad_rows": {"to": 8}}, [10, 4], "float32",
     "pad_rows: the tensor has 10 rows, more than to=8 (take a region of the source to drop rows)"),
    ({"pad_rows": {"to": 8}}, [], "float32", "pad_rows needs at least 1 dimension, got a scalar"),
    ({"pad_rows": {"to": 8, "fill": "mean"}}, [0, 4], "float32", "pad_rows fill: mean needs at least one row to average"),
    ({"pad_rows": {"to": 8, "fill": "mean"}}, [2, 4], "int64", "pad_rows fill: mean needs a floating-point tensor, got int64"),
    ({"scale": 2}, [2], "int32", "scale needs a floating-point tensor, got int32"),
])
def test_shape_rule_errors(spec, shape, dtype, message):
    transform = compile_transform(spec, "t")
    with pytest.raises(ValueError) as err:
        transform.out_shape(tuple(shape))
        transform.out_dtype(dtype)
    assert str(err.value) == message


@pytest.mark.parametrize("spec, message", [
    ({"interpolate": [6, 6]}, "rules[0].transform[0]: interpolate expects a mapping such as "
                              "{size: [24, 24], mode: bicubic, prefix_tokens: 1}, got [6, 6]"),
    ({"interpolate": {}}, "rules[0].transform[0].interpolate.size: missing value (the new grid: [length] or [height, width])"),
    ({"interpolate": {"size": 24}},
     "rules[0].transform[0].interpolate.size: expected [length] or [height, width] (positive integers), got 24"),
    ({"interpolate": {"size": [2, 3, 4]}},
     "rules[0].transform[0].interpolate.size: expected [length] or [height, width] (positive integers), got [2, 3, 4]"),
    ({"interpolate": {"size": [6, 6], "mode": "linear"}},
     "rules[0].transform[0].interpolate.mode: must be one of bicubic, bilinear, nearest, nearest-exact, area "
     "(got 'linear')"),
    ({"interpolate": {"size": [6], "mode": "bicubic"}},
     "rules[0].transform[0].interpolate.mode: must be one of linear, nearest, nearest-exact, area (got 'bicubic')"),
    ({"interpolate": {"size": [6, 6], "prefix_tokens": -1}},
     "rules[0].transform[0].interpolate.prefix_tokens: expected a number of tokens >= 0, got -1"),
    ({"interpolate": {"size": [6, 6], "old_size": [4]}},
     "rules[0].transform[0].interpolate.old_size: expected 2 sizes like size, got [4]"),
    ({"interpolate": {"size": [6, 6], "mode": "nearest", "antialias": True}},
     "rules[0].transform[0].interpolate.antialias: only bilinear and bicubic can antialias (mode is nearest)"),
    ({"interpolate": {"size": [6, 6], "prefix": 1}},
     "rules[0].transform[0].interpolate.prefix: unknown option of interpolate "
     "(known: size, mode, prefix_tokens, old_size, antialias)"),
    ({"adapt_channels": 0},
     "rules[0].transform[0]: adapt_channels expects the number of input channels (a positive integer), got 0"),
    ({"adapt_channels": "gray"},
     "rules[0].transform[0]: adapt_channels expects the number of input channels (a positive integer), got 'gray'"),
    ({"pad_rows": 15}, "rules[0].transform[0]: pad_rows expects a mapping such as {to: 15, fill: init}, got 15"),
    ({"pad_rows": {"fill": "mean"}}, "rules[0].transform[0].pad_rows.to: missing value (the number of rows after padding)"),
    ({"pad_rows": {"to": 0}}, "rules[0].transform[0].pad_rows.to: expected a number of rows (a positive integer), got 0"),
    ({"pad_rows": {"to": 4, "fill": "random"}},
     "rules[0].transform[0].pad_rows.fill: must be one of init, mean, zeros (got 'random')"),
    ({"pad_row": {"to": 4}}, "rules[0].transform[0]: unknown transform 'pad_row' (did you mean 'pad_rows'?)"),
    ({"scale": True}, "rules[0].transform[0]: scale expects a number, got True"),
])
def test_argument_errors(spec, message):
    with pytest.raises(RecipeError) as err:
        compile_transforms([spec], "rules[0].transform")
    assert str(err.value) == message


def test_fill_init_must_come_last():
    with pytest.raises(RecipeError) as err:
        compile_transforms([{"pad_rows": {"to": 4}}, "transpose"], "rules[1].transform")
    assert str(err.value) == ("rules[1].transform[0]: pad_rows(to=4, fill=init) must be the last transform "
                              "(its new rows are the destination's initial values)")
    compile_transforms(["transpose", {"pad_rows": {"to": 4, "fill": "mean"}}, {"scale": 2}], "t")  # other fills anywhere
