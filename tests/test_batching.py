"""advcam.batching.batches: the one batch loop (slice → device → float in [0, 1])."""
import pytest
import torch

from advcam.batching import batches
from advcam.errors import InputError


def test_batches_cover_every_image_once_in_order_scaled_to_unit():
    g = torch.Generator().manual_seed(0)
    x8 = torch.randint(0, 256, (7, 3, 5, 5), dtype=torch.uint8, generator=g)
    got = list(batches(x8, 3))
    assert [sl for sl, _ in got] == [slice(0, 3), slice(3, 6), slice(6, 9)]
    xs = torch.cat([xb for _, xb in got])
    assert xs.dtype == torch.float32 and torch.equal(xs, x8.float() / 255)
    assert 0 <= float(xs.min()) and float(xs.max()) <= 1
    assert x8.dtype == torch.uint8  # the input is not converted in place


def test_float_input_passes_as_is_and_the_device_is_honoured():
    x = torch.rand(4, 3, 2, 2)
    (sl, xb), = list(batches(x, 10, "cpu"))
    assert sl == slice(0, 10) and torch.equal(xb, x)
    assert list(batches(torch.empty(0, 3, 2, 2), 4)) == []


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_a_bad_batch_size_is_named(bad):
    with pytest.raises(InputError, match="batch_size"):
        list(batches(torch.rand(2, 3, 2, 2), bad))
