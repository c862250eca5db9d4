"""The stream of normals made ahead: its values depend on the seed and the requests only."""

from __future__ import annotations

import copy
import pickle
import time

import pytest
import torch

from netlists.errors import ConfigError
from surrogate.normal_stream import NormalStream

REQUESTS = [5, 40, 17, 64, 3, 100, 64, 1, 200, 33]


def _drawn(stream: NormalStream, requests: list[int], *, prefetch_every: int = 0,
           pause: float = 0.0) -> torch.Tensor:
    out = []
    for k, n in enumerate(requests):
        if prefetch_every and k % prefetch_every == 0:
            stream.prefetch(3 * stream.block)
            time.sleep(pause)                      # let the background thread run ahead
        out.append(stream.take((n,)).clone())
    return torch.cat(out)


def test_values_do_not_depend_on_what_was_made_ahead():
    plain = _drawn(NormalStream(7, block=64), REQUESTS)
    ahead = _drawn(NormalStream(7, block=64), REQUESTS, prefetch_every=2, pause=0.01)
    eager = _drawn(NormalStream(7, block=64), REQUESTS, prefetch_every=1)
    assert torch.equal(plain, ahead) and torch.equal(plain, eager)
    assert not torch.equal(plain, _drawn(NormalStream(8, block=64), REQUESTS))
    # standard normals, in the requested shape, from torch's generator block by block
    s = NormalStream(3, block=1024)
    x = s.take((4, 256))
    assert x.shape == (4, 256)
    assert torch.equal(x.reshape(-1), torch.randn(1024, generator=torch.Generator()
                                                   .manual_seed(3)))
    big = NormalStream(5, block=4096).take((5000,))
    assert abs(float(big.mean())) < 0.1 and float(big.std()) == pytest.approx(1.0, abs=0.05)


def test_a_request_larger_than_a_block_spans_blocks():
    s = NormalStream(11, block=64)
    head = s.take((10,)).clone()
    long = s.take((150,))                     # the rest of block 1, blocks 2 and 3
    g = torch.Generator().manual_seed(11)
    blocks = torch.cat([torch.randn(64, generator=g) for _ in range(3)])
    assert torch.equal(head, blocks[:10]) and torch.equal(long, blocks[10:160])
    # a request that does not fit what is left starts the next block
    s = NormalStream(11, block=64)
    s.take((60,))
    assert torch.equal(s.take((8,)), blocks[64:72])


def test_the_position_is_saved_and_restored():
    s = NormalStream(21, block=64)
    _drawn(s, REQUESTS[:4], prefetch_every=1)
    state = s.state_dict()
    want = _drawn(s, REQUESTS[4:])
    t = NormalStream(999, block=64)            # another seed: the state replaces it
    t.prefetch(500)
    t.load_state_dict(state)
    assert torch.equal(_drawn(t, REQUESTS[4:], prefetch_every=3), want)
    fresh = NormalStream(21, block=64)
    fresh.load_state_dict(NormalStream(21, block=64).state_dict())
    assert torch.equal(_drawn(fresh, REQUESTS), _drawn(NormalStream(21, block=64), REQUESTS))
    with pytest.raises(ConfigError, match="blocks of 64"):
        NormalStream(21, block=128).load_state_dict(state)
    with pytest.raises(ConfigError, match="block"):
        NormalStream(1, block=8)
    s.close()
    assert s.take((3,)).shape == (3,)           # still works, without a thread


def test_a_copy_continues_from_the_same_place():
    s = NormalStream(31, block=64)
    s.take((20,))
    s.prefetch(200)
    twin = copy.deepcopy(s)
    again = pickle.loads(pickle.dumps(s))
    want = _drawn(s, REQUESTS)
    assert torch.equal(_drawn(twin, REQUESTS), want)
    assert torch.equal(_drawn(again, REQUESTS), want)
