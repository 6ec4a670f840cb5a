"""Randomness as data: JAX-style keys, and a scope that routes dropout and ``torch.rand*`` to them.

A training step is reproducible only if every random draw in it is a function of values the step
receives. This module makes randomness such a value, the way `jax.random` does:

* A **key** is an ``int64`` tensor of shape ``(2,)`` holding two 32-bit words (each in
  ``[0, 2**32)``). It is ordinary data: it lives in the train state, is saved in checkpoints,
  moves between devices and is passed into compiled functions like any other tensor.
* New keys are derived, never mutated: `split` makes ``num`` independent keys from one, and
  `fold_in` mixes an integer into a key. ``fold_in(state.rng, state.step)`` gives every step its
  own key; ``step`` may be a 0-d integer tensor, so a compiled step neither syncs with the host
  nor recompiles as the step changes.
* Draws (`bits`, `uniform`, `normal`, `bernoulli`, `randint`, `permutation`) are pure functions
  of ``(key, shape, dtype)``.
* `keyed` opens a scope (a `torch.overrides.TorchFunctionMode`) inside which dropout (hence
  ``nn.Dropout``), ``torch.rand``/``randn``/``randint``/``bernoulli`` and the other ops listed
  there draw from the scope's key instead of the global generator. The *i*-th draw in the scope
  (counting from 0) uses ``fold_in(key, i)``. Random ops the scope cannot key raise
  `NotImplementedError` rather than silently use the global generator.

Mechanism:
    Every draw is Threefry-2x32 with 20 rounds (Salmon et al., "Parallel random numbers: as
    easy as 1, 2, 3", SC 2011), the counter-based generator behind `jax.random`: element ``j``
    of a draw hashes the counter ``(j >> 32, j & 0xFFFFFFFF)`` under the key and XORs the two
    output words (JAX's "partitionable" scheme, its default since 0.5). The hash is written in
    ``int64`` torch ops (add, shift, xor, and) whose intermediates stay below ``2**63``, so no
    signed overflow occurs and every device computes the same bits. Floats are made exactly
    from bits: float32 ``uniform`` is ``(bits >> 9) * 2**-23``; ``normal`` is
    ``sqrt(2) * erfinv(u)`` for ``u`` uniform in ``(-1, 1)``; ``bernoulli(p)`` is
    ``uniform < p``; keyed dropout multiplies by ``bernoulli(1 - p) / (1 - p)``.

    The hash runs as custom operators (``torch.ops.functrain.threefry2x32`` for keys,
    ``threefry2x32_iota``, ``threefry_bits32``, ``threefry_bernoulli`` for draws, and
    ``normal``), registered at the first draw (not at import). Eagerly each is a few in-place
    integer kernels per cache-sized chunk (a few counters on the CPU, as for ``fold_in``, are
    hashed as Python ints). Under `torch.compile` with Inductor, ``threefry_bits32`` (uniform,
    bits, randint, permutation) and ``threefry_bernoulli`` (bernoulli with a float ``p``, hence
    dropout) are lowered to one elementwise node that Inductor fuses with its consumer: a
    dropout's mask is hashed, compared and applied in one loop, and only the 1-byte mask is
    kept for the backward pass. The node is built from the same Python function as the eager
    integers (``functrain/random/_lowering.py``; 32-bit lanes for draws up to ``2**31``
    elements), so it computes the same bits. Tracing the hash's ~125 torch ops instead made
    Inductor re-trace the shared intermediates of every round (10-40 s of code generation per
    draw). ``normal`` and the key operators stay opaque: a compiled function runs their eager
    kernels. Where Inductor's private lowering API is missing, every operator runs opaque
    (same bits, slower).

    `key`, `split`, `fold_in`, `bits`, `uniform`, `bernoulli` and `permutation` give the numbers
    `jax.random` gives with its default threefry implementation (checked against JAX 0.10 for
    seeds below ``2**31`` and ``fold_in`` data below ``2**32``); so does `randint` for ranges up
    to ``2**16``. Exactly, against JAX 0.10 on XLA's CPU (``tests/test_random_jax.py``):
    `uniform` with any bounds is bit-identical in float32 and bfloat16 (the multiply-add is
    rounded as XLA rounds it), and in float16 where XLA fuses float16's multiply-add: XLA's
    CPU code does on some CPUs and rounds the product and the sum separately on others (an
    Intel Xeon with AVX-512F but no AVX512-FP16, JAX 0.10.2: ~20% of draws then differ by 1
    ULP). functrain always fuses, so its draws do not depend on the CPU. In float64 with
    bounds other than ``[0, 1)`` the last bit may differ. `normal` is bit-identical in float16
    and bfloat16; in float32 it computes XLA's erfinv polynomial, and ~1% of draws differ by
    1-3 ULP (XLA's float32 ``log1p`` is not correctly rounded); float64 uses ``torch.erfinv``,
    not XLA's algorithm.

Guarantees:
    * ``(key, shape, dtype)`` fix every draw. Compiled and eager draws are bit-identical
      (the same kernels, or for the fused draws the same integer function; a dropout scales,
      then masks, and bfloat16 arithmetic rounds in integer ops, so 16-bit outputs agree too).
      Integer draws, `uniform` on ``[0, 1)``, `bernoulli` and dropout masks
      are bit-identical across devices too; `normal` may differ across devices in the last bit
      (``log1p``).
    * Inside `keyed`, draws are numbered by a Python counter in program order, so for a fixed
      program a key fixes every draw: the same seed gives an identical run, compiled or eager,
      and a run resumed at step ``k`` from a state holding the key and the step repeats the
      uninterrupted one.
    * The global generator is neither read nor advanced.

Limits:
    * The draw counter follows Python control flow: a branch that skips a draw renumbers the
      later draws of the scope (still deterministic for the same inputs).
    * Enter `keyed` *inside* the function you compile. Dynamo then traces the mode away
      (``fullgraph=True`` works, also under `torch.func.grad` of `torch.func.functional_call`) and
      each draw's index is a constant of the graph. A scope entered *outside* a compiled function
      still draws correctly, but Dynamo guards on its counter: each call recompiles.
    * Dynamo (torch 2.14.1) hands a function to a mode only if it is on its list of overridable
      functions, and ``torch.rand_like``, ``randn_like``, ``randint_like`` and ``torch.normal``
      are not: *inside compiled code* they bypass the scope and use the global generator. Write
      ``torch.randn(x.shape, dtype=x.dtype, device=x.device)`` there instead. Eager code is keyed.
    * Python-level torch functions that handle ``__torch_function__`` themselves and draw inside
      hide those draws from the scope; `keyed` handles the ones in torch (dropout family,
      ``scaled_dot_product_attention``, ``rrelu``, ``gumbel_softmax``, fractional max pooling,
      ``nn.init``) and raises for ``F.multi_head_attention_forward`` with dropout and RNN dropout.
    * In eager mode every torch call inside the scope passes through a Python
      ``__torch_function__`` handler (a few microseconds each).

Cost:
    The hash is ~125 integer operations per element. Compiled with Inductor, keyed dropout is
    fused into the kernel that applies it and costs about what native dropout costs in a
    compiled training step (``benchmarks/keyed_dropout.py``; figures in
    ``benchmarks/README.md``); its one hash kernel per dropout shape adds a few seconds of
    C++ compilation on a cold cache. Eagerly it runs as separate integer kernels, several
    times native dropout (``benchmarks/random_cost.py``).

Example:
    >>> import torch, functrain as ft
    >>> key = ft.random.key(0)
    >>> k_init, k_data = ft.random.split(key)
    >>> ft.random.uniform(k_data, (3,)).shape
    torch.Size([3])
    >>> drop = torch.nn.Dropout(0.5)
    >>> x = torch.ones(8)
    >>> with ft.random.keyed(ft.random.fold_in(key, 7)):
    ...     a = drop(x)
    >>> with ft.random.keyed(ft.random.fold_in(key, 7)):
    ...     b = drop(x)
    >>> torch.equal(a, b)
    True
"""

from ._draws import bernoulli as bernoulli
from ._draws import bits as bits
from ._draws import normal as normal
from ._draws import permutation as permutation
from ._draws import randint as randint
from ._draws import uniform as uniform
from ._keys import fold_in as fold_in
from ._keys import key as key
from ._keys import split as split
from ._scope import KeyedRandomness as KeyedRandomness
from ._scope import keyed as keyed

__all__ = [
    "KeyedRandomness",
    "bernoulli",
    "bits",
    "fold_in",
    "key",
    "keyed",
    "normal",
    "permutation",
    "randint",
    "split",
    "uniform",
]

