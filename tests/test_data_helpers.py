"""Quick-run loader views: take (limit_*_batches, fast_dev_run) and overfit_batches."""

from __future__ import annotations

import itertools

import pytest
import torch

import functrain as ft
from functrain.data import overfit_batches, take


def _loader(n=10, batch_size=2, shuffle=False):
    return ft.data.ArrayLoader(torch.arange(n), batch_size=batch_size, shuffle=shuffle, seed=3)


def test_take_is_re_iterable_and_has_a_length():
    view = take(_loader(), 3)
    first = [b.tolist() for b in view]
    assert first == [[0, 1], [2, 3], [4, 5]]
    assert [b.tolist() for b in view] == first  # a second pass: islice would yield nothing
    assert len(view) == 3
    assert len(take(_loader(), 99)) == 5  # never longer than the loader


def test_take_a_fraction_rounds_down_to_at_least_one_batch():
    assert len(take(_loader(), 0.5)) == 2  # 5 batches * 0.5
    assert len(take(_loader(), 0.01)) == 1
    assert len(take(_loader(), 1.0)) == 5


def test_take_forwards_set_epoch_so_a_shuffled_order_follows_the_epoch():
    loader = _loader(shuffle=True)
    view = take(loader, 2)
    view.set_epoch(4)
    got = [b.tolist() for b in view]
    want = loader.order(4)[:4].view(2, 2).tolist()
    assert got == want


def test_take_stops_reading_the_loader_after_n_batches():
    pulled = []

    class Counting:
        def __iter__(self):
            for i in itertools.count():
                pulled.append(i)
                yield torch.tensor([i])

    assert [int(b) for b in take(Counting(), 2)] == [0, 1]
    assert pulled == [0, 1]


def test_fit_runs_every_epoch_over_a_taken_loader():
    model = torch.nn.Linear(1, 1)
    x = torch.randn(40, 1)
    loader = ft.data.ArrayLoader((x, 2 * x), batch_size=4)

    def step(state, batch):
        def loss_fn(params):
            out, _ = ft.call(model, params, state.buffers, batch[0])
            return ((out - batch[1]) ** 2).mean()

        grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
        return state.apply_gradients(grads), {"loss": loss}

    state = ft.TrainState.create(model, ft.optim.sgd(0.1))
    state = ft.fit(step, state, take(loader, 3), epochs=3, compile="eager",
                   callbacks=[ft.Logging.quiet()])
    assert int(state.step) == 9


def test_overfit_batches_replays_the_same_batches_and_reads_the_loader_once():
    loader = _loader(shuffle=True)
    reads = []
    view = overfit_batches(_CountingIter(loader, reads), 2)
    first = [b.tolist() for b in view]
    assert [b.tolist() for b in view] == first
    view.set_epoch(7)  # ignored
    assert [b.tolist() for b in view] == first
    assert len(view) == 2 and len(reads) == 1
    assert first == loader.order(0)[:4].view(2, 2).tolist()


class _CountingIter:
    def __init__(self, loader, reads):
        self.loader, self.reads = loader, reads

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        self.reads.append(1)
        return iter(self.loader)


def test_overfit_batches_of_an_empty_loader_says_so():
    with pytest.raises(ValueError, match="at least one batch"):
        list(overfit_batches([], 1))


@pytest.mark.parametrize("bad, error, match", [
    (0, ValueError, r"n: expected an int >= 1, got 0"),
    (1.5, ValueError, r"n: expected a number in \(0, 1\]"),
    (0.0, ValueError, r"n: expected a number in \(0, 1\]"),
    ("3", TypeError, r"n: expected a number, got '3'"),
    (True, TypeError, r"n: expected a number, got True"),
])
def test_bad_counts_name_the_argument(bad, error, match):
    with pytest.raises(error, match=match):
        take(_loader(), bad)


def test_an_iterator_or_a_non_iterable_is_refused_with_a_hint():
    with pytest.raises(TypeError, match="re-iterable.*HINT: pass the DataLoader"):
        take(iter(_loader()), 2)
    with pytest.raises(TypeError, match="loader: expected an iterable of batches"):
        take(3, 2)


def test_a_fraction_of_a_loader_without_length_is_refused():
    def gen():
        yield torch.zeros(1)

    class NoLen:
        def __iter__(self):
            return gen()

    with pytest.raises(TypeError, match="needs a loader with a length"):
        take(NoLen(), 0.5)
    assert len(list(take(NoLen(), 3))) == 1
