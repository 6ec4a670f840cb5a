"""Mixed precision and numerical safety: policies, loss scaling, skipping non-finite steps.

A `Policy` says which dtype the params live in and which the forward computes in
(``Policy.from_name("bf16-mixed")``, ``"16-mixed"``, ``"bf16-true"``, ``"32"``). With float16
compute, gradients need loss scaling: a `DynamicLossScale` rides in the train state
(``state.extras["loss_scale"]``), and two helpers write the step for you:

* `value_and_grad` scales the loss before differentiating and unscales the gradients after,
  so what you get back is the true loss and the true gradients;
* `apply_gradients` checks that the gradients are finite, runs the optimizer, and, branch-free,
  keeps the old params and optimizer state if they were not, counting the skipped step and
  adjusting the scale (`torch.amp.GradScaler`'s rule, to the bit).

A step written with them runs unchanged under every policy: without a loss scale in the state
(`NoOpLossScale`) they reduce to ``torch.func`` and ``state.apply_gradients``.

Gradient clipping composes: the gradients reaching ``tx`` are already unscaled, so put
``optim.clip_by_global_norm`` first in the chain and it clips the true norm (GradScaler's
"unscale, then clip"). On a skipped step the clipped NaN update is simply discarded.

Skipped steps: the optimizer step is skipped (params and ``opt_state`` stay bit-identical, so
Adam's bias correction and the optimizer's schedules do not advance, as with GradScaler and
``torch.optim``), but ``state.step`` still advances (as flax's TrainState and Lightning's
``global_step`` do): it counts steps taken, keeping it in line with ``fit``'s counter, logs and
checkpoints; ``state.extras["loss_scale"].skipped_steps`` counts the skipped ones. Buffers passed
as ``buffers=...`` (BatchNorm statistics) are updated either way: the forward did run.

Example:
    A complete float16 step, trained here by hand on the CPU. ``fit`` and ``compile_step``
    with ``precision="16-mixed"`` do the ``prepare_state`` and ``wrap_step`` lines themselves:

    >>> import torch, functrain as ft
    >>> from functrain import precision as mp
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    >>> tx = ft.optim.chain(ft.optim.clip_by_global_norm(1.0), ft.optim.adamw(1e-2))
    >>> policy = mp.Policy.from_name("16-mixed")
    >>> state = policy.prepare_state(ft.TrainState.create(model, tx))  # + DynamicLossScale
    >>> def step(state, batch):
    ...     x, y = batch
    ...     def loss_fn(params):
    ...         out, _ = ft.call(model, params, state.buffers, x)
    ...         return ((out.float() - y) ** 2).mean()
    ...     loss, grads = mp.value_and_grad(loss_fn)(
    ...         state.params, loss_scale=mp.get_loss_scale(state))
    ...     state = mp.apply_gradients(state, grads)
    ...     return state, {"loss": loss, "loss_scale": mp.get_loss_scale(state).loss_scale}
    >>> step = policy.wrap_step(step, "cpu")  # cast the batch, enter autocast
    >>> batch = (torch.randn(32, 4), torch.randn(32, 1))
    >>> for _ in range(3):
    ...     state, metrics = step(state, batch)
    >>> state.params["0.weight"].dtype, int(state.step), metrics["loss_scale"]
    (torch.float32, 3, tensor(65536.))
"""

from __future__ import annotations

from ._grads import apply_gradients as apply_gradients
from ._grads import get_loss_scale as get_loss_scale
from ._grads import value_and_grad as value_and_grad
from ._policy import Policy as Policy
from ._scale import DynamicLossScale as DynamicLossScale
from ._scale import NoOpLossScale as NoOpLossScale
from ._scale import all_finite as all_finite

__all__ = [
    "DynamicLossScale",
    "NoOpLossScale",
    "Policy",
    "all_finite",
    "apply_gradients",
    "get_loss_scale",
    "value_and_grad",
]
