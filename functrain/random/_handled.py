"""The torch functions `keyed` routes to its key: one handler per function."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._compat import calculate_correct_fan
from ._draws import bernoulli, normal, permutation, randint, uniform
from ._threefry import _bernoulli32

_PASS = object()  # a handler's answer for "run the original function"


def _no_generator(where: str, generator: Any = None, out: Any = None) -> None:
    if generator is not None:
        raise NotImplementedError(
            f"{where}(generator=...) is not supported inside functrain.random.keyed(...): the "
            "scope's key replaces generators. HINT: drop the generator argument."
        )
    if out is not None:
        raise NotImplementedError(
            f"{where}(out=...) is not supported inside functrain.random.keyed(...). "
            "HINT: assign the result instead."
        )


# Dropout family -----------------------------------------------------------------------------

_SELU_ALPHA = 1.7580993408473766  # as in ATen's alpha dropout


def _dropout_impl(scope, /, x, p, training, inplace, *, feature=False, alpha=False, batched=True):
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return x
    if feature:
        if x.dim() < (2 if batched else 1):
            raise RuntimeError(
                f"Feature dropout requires at least 2 dimensions in the input, got {x.dim()}."
            )
        lead = 2 if batched else 1
        shape = tuple(x.shape[:lead]) + (1,) * (x.dim() - lead)
    else:
        shape = tuple(x.shape)
    if p == 1.0:  # as ATen: everything dropped, no draw
        return x.mul_(0.0) if inplace else x * 0.0
    keep = _bernoulli32(scope.next_key(x.device), shape, 1.0 - p, x.dtype)  # 0/1
    if not alpha:
        # Scale first, then mask: the one rounding (of x * scale) is the same eager and under
        # Inductor, which keeps 16-bit intermediates in float32 (multiplying by 0/1 is exact).
        scale = 1.0 / (1.0 - p)
        return x.mul_(scale).mul_(keep) if inplace else x * scale * keep
    a = 1.0 / math.sqrt((_SELU_ALPHA**2 * p + 1.0) * (1.0 - p))
    b = (keep - 1.0) * (_SELU_ALPHA * a) + _SELU_ALPHA * a * p
    noise = keep * a
    return x.mul_(noise).add_(b) if inplace else x * noise + b


def _f_dropout(scope, /, input, p=0.5, training=True, inplace=False):
    return _dropout_impl(scope, input, p, training, inplace)


def _f_alpha_dropout(scope, /, input, p=0.5, training=False, inplace=False):
    return _dropout_impl(scope, input, p, training, inplace, alpha=True)


def _f_feature_alpha_dropout(scope, /, input, p=0.5, training=False, inplace=False):
    return _dropout_impl(scope, input, p, training, inplace, feature=True, alpha=True)


def _f_dropout1d(scope, /, input, p=0.5, training=True, inplace=False):
    if input.dim() not in (2, 3):
        raise RuntimeError(
            f"dropout1d: Expected 2D or 3D input, but received a {input.dim()}D input."
        )
    return _dropout_impl(scope, input, p, training, inplace, feature=True, batched=input.dim() == 3)


def _f_dropout2d(scope, /, input, p=0.5, training=True, inplace=False):
    # Like torch: a 3D input is treated as (N, C, L).
    return _dropout_impl(scope, input, p, training, inplace, feature=True)


def _f_dropout3d(scope, /, input, p=0.5, training=True, inplace=False):
    return _dropout_impl(scope, input, p, training, inplace, feature=True, batched=input.dim() != 4)


def _aten_dropout(feature, alpha, inplace):
    def handler(scope, /, input, p, train):
        return _dropout_impl(scope, input, p, train, inplace, feature=feature, alpha=alpha)

    return handler


def _native_dropout(scope, /, input, p, train):
    if train is False:
        return input.clone(), torch.ones_like(input, dtype=torch.bool)
    keep = bernoulli(scope.next_key(input.device), 1.0 - p, tuple(input.shape))
    scale = 1.0 / (1.0 - p) if p < 1.0 else 0.0
    return input * scale * keep.to(input.dtype), keep


def _sdpa(
    scope,
    /,
    query,
    key,
    value,
    attn_mask=None,
    dropout_p=0.0,
    is_causal=False,
    scale=None,
    enable_gqa=False,
):
    if dropout_p == 0.0:
        return _PASS
    # The math path of torch's documentation, with keyed dropout on the attention weights.
    L, S = query.size(-2), key.size(-2)
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    if enable_gqa:
        key = key.repeat_interleave(query.size(-3) // key.size(-3), -3)
        value = value.repeat_interleave(query.size(-3) // value.size(-3), -3)
    scores = query @ key.transpose(-2, -1) * scale
    if is_causal:
        causal = torch.ones(L, S, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    weights = _dropout_impl(scope, torch.softmax(scores, dim=-1), dropout_p, True, False)
    return weights @ value


def _mha(scope, /, *args, **kwargs):
    dropout_p = args[10] if len(args) > 10 else kwargs.get("dropout_p", 0.0)
    training = args[13] if len(args) > 13 else kwargs.get("training", True)
    if training and dropout_p > 0.0:
        raise NotImplementedError(
            "nn.MultiheadAttention with dropout > 0 in training draws inside "
            "F.multi_head_attention_forward, which functrain.random.keyed(...) cannot reach. "
            "HINT: set dropout=0.0 there, or use an attention module that calls "
            "F.scaled_dot_product_attention or F.dropout itself (both are keyed)."
        )
    return _PASS


def _rrelu(inplace):
    def handler(scope, /, input, lower=1.0 / 8, upper=1.0 / 3, training=False, generator=None):
        _no_generator("rrelu", generator)
        if not training:
            return _PASS
        slope = uniform(scope.next_key(input.device), tuple(input.shape), input.dtype, lower, upper)
        noise = torch.where(input <= 0, slope, torch.ones_like(slope))
        return input.mul_(noise) if inplace else input * noise

    return handler


def _f_rrelu(scope, /, input, lower=1.0 / 8, upper=1.0 / 3, training=False, inplace=False):
    return _rrelu(inplace)(scope, input, lower, upper, training)


def _gumbel_softmax(scope, /, logits, tau=1.0, hard=False, eps=1e-10, dim=-1):
    u = uniform(scope.next_key(logits.device), tuple(logits.shape), logits.dtype)
    gumbels = -torch.log(-torch.log1p(-u))  # ~Gumbel(0, 1); 1 - u > 0
    y_soft = ((logits + gumbels) / tau).softmax(dim)
    if not hard:
        return y_soft
    index = y_soft.max(dim, keepdim=True)[1]
    y_hard = torch.zeros_like(logits).scatter_(dim, index, 1.0)
    return y_hard - y_soft.detach() + y_soft


def _fractional_max_pool(spatial):
    def handler(
        scope,
        /,
        input,
        kernel_size,
        output_size=None,
        output_ratio=None,
        return_indices=False,
        _random_samples=None,
    ):
        if _random_samples is None:
            n_batch = 1 if input.dim() == spatial + 1 else input.size(0)
            shape = (n_batch, input.size(-spatial - 1), spatial)
            _random_samples = uniform(scope.next_key(input.device), shape, input.dtype)
        return _FRACTIONAL[spatial](
            input, kernel_size, output_size, output_ratio, return_indices, _random_samples
        )

    return handler


_FRACTIONAL = {2: F.fractional_max_pool2d, 3: F.fractional_max_pool3d}


# Factories and in-place samplers ----------------------------------------------------------


def _factory(where, size, kwargs, default_dtype, like=None):
    """Parse a torch factory's size and keyword arguments: (shape, dtype, device, finish)."""
    if "size" in kwargs:
        size = kwargs.pop("size")
    elif len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
        size = size[0]
    _no_generator(where, kwargs.pop("generator", None), kwargs.pop("out", None))
    dtype = kwargs.pop("dtype", None)
    device = kwargs.pop("device", None)
    requires_grad = kwargs.pop("requires_grad", False)
    pin_memory = kwargs.pop("pin_memory", False)
    kwargs.pop("memory_format", None)
    if kwargs.pop("layout", None) not in (None, torch.strided) or kwargs.pop("names", None):
        raise NotImplementedError(
            f"{where}: only strided, unnamed tensors are supported inside "
            "functrain.random.keyed(...)."
        )
    if kwargs:
        raise TypeError(f"{where}() got unexpected keyword arguments {sorted(kwargs)}.")
    if like is not None:
        shape = tuple(like.shape)
        dtype = like.dtype if dtype is None else dtype
        device = like.device if device is None else device
    else:
        shape = tuple(size)
        dtype = default_dtype if dtype is None else dtype
        # torch.get_default_device() does not trace; a factory call honours it and does.
        device = torch.empty(0).device if device is None else device

    def finish(t):
        if pin_memory:
            t = t.pin_memory()
        return t.requires_grad_() if requires_grad else t

    return shape, dtype, device, finish


def _rand(scope, /, *size, **kwargs):
    shape, dtype, device, finish = _factory("torch.rand", size, kwargs, torch.get_default_dtype())
    return finish(uniform(scope.next_key(device), shape, dtype))


def _randn(scope, /, *size, **kwargs):
    shape, dtype, device, finish = _factory("torch.randn", size, kwargs, torch.get_default_dtype())
    return finish(normal(scope.next_key(device), shape, dtype))


def _rand_like(scope, /, input, **kwargs):
    shape, dtype, device, finish = _factory("torch.rand_like", (), kwargs, None, like=input)
    return finish(uniform(scope.next_key(device), shape, dtype))


def _randn_like(scope, /, input, **kwargs):
    shape, dtype, device, finish = _factory("torch.randn_like", (), kwargs, None, like=input)
    return finish(normal(scope.next_key(device), shape, dtype))


def _randint(scope, /, *args, **kwargs):
    low = kwargs.pop("low", 0)
    if "high" in kwargs:
        high, size = kwargs.pop("high"), args
    elif len(args) >= 3 or (len(args) == 2 and "size" in kwargs):
        low, high, size = args[0], args[1], args[2:]
    else:
        high, size = args[0], args[1:]
    shape, dtype, device, finish = _factory("torch.randint", size, kwargs, torch.int64)
    return finish(randint(scope.next_key(device), shape, low, high, dtype))


def _randint_like(scope, /, input, *args, **kwargs):
    low = kwargs.pop("low", 0)
    high = kwargs.pop("high", None)
    if len(args) == 2:
        low, high = args
    elif len(args) == 1:
        high = args[0]
    shape, dtype, device, finish = _factory("torch.randint_like", (), kwargs, None, like=input)
    return finish(randint(scope.next_key(device), shape, low, high, dtype))


def _randperm(scope, /, n, **kwargs):
    shape, dtype, device, finish = _factory("torch.randperm", (), kwargs, torch.int64)
    return finish(permutation(scope.next_key(device), n).to(dtype))


def _torch_normal(scope, /, mean, std=1.0, size=None, *, generator=None, out=None, **kwargs):
    _no_generator("torch.normal", generator, out)
    tensors = [t for t in (mean, std) if isinstance(t, Tensor)]
    if tensors:
        shape = torch.broadcast_shapes(*(t.shape for t in tensors))
        dtype = torch.result_type(mean, std) if len(tensors) == 2 else tensors[0].dtype
        device = tensors[0].device
        finish = lambda t: t
    else:
        shape, dtype, device, finish = _factory(
            "torch.normal", (size,), kwargs, torch.get_default_dtype()
        )
    return finish(normal(scope.next_key(device), shape, dtype) * std + mean)


def _bernoulli(scope, /, input, p=None, *, generator=None, out=None):
    _no_generator("torch.bernoulli", generator, out)
    probs = input if p is None else p
    draw = bernoulli(scope.next_key(input.device), probs, tuple(input.shape))
    return draw.to(input.dtype)


def _bernoulli_(scope, /, self, p=0.5, *, generator=None):
    _no_generator("Tensor.bernoulli_", generator)
    return self.copy_(bernoulli(scope.next_key(self.device), p, tuple(self.shape)))


def _uniform_(scope, /, self, *args, generator=None, **kwargs):
    _no_generator("Tensor.uniform_", generator)
    low = args[0] if len(args) > 0 else kwargs.get("from", 0.0)
    high = args[1] if len(args) > 1 else kwargs.get("to", 1.0)
    return self.copy_(
        uniform(scope.next_key(self.device), tuple(self.shape), self.dtype, low, high)
    )


def _normal_(scope, /, self, mean=0.0, std=1.0, *, generator=None):
    _no_generator("Tensor.normal_", generator)
    z = normal(scope.next_key(self.device), tuple(self.shape), self.dtype)
    return self.copy_(z * std + mean)


def _exponential_(scope, /, self, lambd=1.0, *, generator=None):
    _no_generator("Tensor.exponential_", generator)
    u = uniform(scope.next_key(self.device), tuple(self.shape), self.dtype)
    return self.copy_(-torch.log1p(-u) / lambd)  # 1 - u > 0, so finite


# nn.init functions that dispatch __torch_function__ themselves, so the scope sees them and not
# the Tensor.uniform_/normal_ inside them.


def _init_uniform(scope, /, tensor, a=0.0, b=1.0, generator=None):
    with torch.no_grad():
        return _uniform_(scope, tensor, a, b, generator=generator)


def _init_normal(scope, /, tensor, mean=0.0, std=1.0, generator=None):
    with torch.no_grad():
        return _normal_(scope, tensor, mean, std, generator=generator)


def _init_trunc_normal(scope, /, tensor, mean=0.0, std=1.0, a=-2.0, b=2.0, generator=None):
    # As torch.nn.init.trunc_normal_: inverse CDF of a uniform on the truncated range.
    _no_generator("nn.init.trunc_normal_", generator)
    cdf = lambda v: (1.0 + math.erf(v / math.sqrt(2.0))) / 2.0
    lo, hi = 2 * cdf((a - mean) / std) - 1, 2 * cdf((b - mean) / std) - 1
    u = uniform(scope.next_key(tensor.device), tuple(tensor.shape), tensor.dtype, lo, hi)
    with torch.no_grad():
        t = torch.erfinv(u) * (std * math.sqrt(2.0)) + mean
        return tensor.copy_(t.clamp(min=a, max=b))


def _init_kaiming_uniform(
    scope, /, tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", generator=None, **kwargs
):
    if 0 in tensor.shape:
        return tensor
    fan = calculate_correct_fan(tensor, mode)
    bound = math.sqrt(3.0) * torch.nn.init.calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return _init_uniform(scope, tensor, -bound, bound, generator)


def _rnn(name, lstm):
    def handler(scope, /, *args, **kwargs):
        # (input, hx, params, has_biases, num_layers, dropout, train, ...); the packed-sequence
        # overload has batch_sizes after input. An LSTM's hx is a tuple, a GRU's a tensor.
        packed = isinstance(args[1] if lstm else args[2], Tensor)
        dropout, train = args[6:8] if packed else args[5:7]
        if train and dropout > 0.0:
            raise NotImplementedError(
                f"nn.{name} with dropout > 0 in training draws inside torch.{name.lower()}, "
                "which functrain.random.keyed(...) cannot key. HINT: use dropout=0.0 and put "
                "nn.Dropout (keyed) between single-layer RNNs."
            )
        return _PASS

    return handler


_HANDLERS: dict[Callable, Callable] = {
    F.dropout: _f_dropout,
    F.alpha_dropout: _f_alpha_dropout,
    F.feature_alpha_dropout: _f_feature_alpha_dropout,
    F.dropout1d: _f_dropout1d,
    F.dropout2d: _f_dropout2d,
    F.dropout3d: _f_dropout3d,
    torch.dropout: _aten_dropout(False, False, False),
    torch.dropout_: _aten_dropout(False, False, True),
    torch.feature_dropout: _aten_dropout(True, False, False),
    torch.feature_dropout_: _aten_dropout(True, False, True),
    torch.alpha_dropout: _aten_dropout(False, True, False),
    torch.alpha_dropout_: _aten_dropout(False, True, True),
    torch.feature_alpha_dropout: _aten_dropout(True, True, False),
    torch.feature_alpha_dropout_: _aten_dropout(True, True, True),
    torch.native_dropout: _native_dropout,
    F.scaled_dot_product_attention: _sdpa,
    F.multi_head_attention_forward: _mha,
    F.rrelu: _f_rrelu,
    torch.rrelu: _rrelu(False),
    torch.rrelu_: _rrelu(True),
    F.gumbel_softmax: _gumbel_softmax,
    F.fractional_max_pool2d: _fractional_max_pool(2),
    F.fractional_max_pool2d_with_indices: _fractional_max_pool(2),
    F.fractional_max_pool3d: _fractional_max_pool(3),
    F.fractional_max_pool3d_with_indices: _fractional_max_pool(3),
    torch.rand: _rand,
    torch.randn: _randn,
    torch.rand_like: _rand_like,
    torch.randn_like: _randn_like,
    torch.randint: _randint,
    torch.randint_like: _randint_like,
    torch.randperm: _randperm,
    torch.normal: _torch_normal,
    torch.bernoulli: _bernoulli,
    Tensor.bernoulli: _bernoulli,
    Tensor.bernoulli_: _bernoulli_,
    Tensor.uniform_: _uniform_,
    Tensor.normal_: _normal_,
    Tensor.exponential_: _exponential_,
    torch.nn.init.uniform_: _init_uniform,
    torch.nn.init.normal_: _init_normal,
    torch.nn.init.trunc_normal_: _init_trunc_normal,
    torch.nn.init.kaiming_uniform_: _init_kaiming_uniform,
    torch.lstm: _rnn("LSTM", True),
    torch.gru: _rnn("GRU", False),
    torch.rnn_tanh: _rnn("RNN", False),
    torch.rnn_relu: _rnn("RNN", False),
}
