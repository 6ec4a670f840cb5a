"""Checkpoints: save a whole train state atomically and resume from it exactly.

`save` writes a pytree (usually a `functrain.TrainState`: step, params, buffers, optimizer
state, RNG key, extras such as a loss scale) plus a ``meta`` dict for the loop's own state
(epoch, position in the epoch, data-order seed, metric windows, callback state). `restore`
reads it back into the structure of a ``like`` state, bit for bit, after checking every leaf's
path, shape and dtype. `CheckpointManager` keeps the last few checkpoints of a run and finds
the newest intact one. `export_weights` gives a state's params and buffers as a
``state_dict`` (and writes them as one safetensors file), `load_params` reads such a file,
`load_weights` loads a checkpoint or such a file into a plain module.

The tensors go through `torch.distributed.checkpoint` (DCP), the format in which many
processes write the shards of one state and a different number of processes read it back.
Today `save` writes from one process (DCP's ``no_dist=True``, no process group needed; under
an initialized process group call it on one rank only); the distributed runner will pass its
process group instead, with the same files, manifest and `restore`. Each leaf is stored under
its path, e.g. ``state.params['fc.weight']``, so a checkpoint can be inspected and loaded
partially with DCP alone.

Layout of a run directory (``CheckpointManager(run_dir / "checkpoints", keep=3)``)::

    run_dir/checkpoints/
        step_000001000/             one checkpoint (`save` writes this directory)
            manifest.json           written last: format version, versions, leaf paths with
                                    shapes and dtypes (or JSON values), SHA-256 of every file,
                                    the number of ranks that wrote it (if several)
            meta.json               the ``meta`` dict; its tensors are stored with the data
            .metadata               DCP's index of the data (a pickle, see Safety)
            __0_0.distcp            the tensor data (DCP): one file per writer thread
            __0_1.distcp            (several for states over 64 MiB) and per process
        step_000002000/
        .tmp-step_000003000-4242/   a save in progress (or one that crashed): ignored

Atomicity:
    `save` writes into a sibling ``.tmp-<name>-<pid>`` directory, fsyncs every file, writes
    ``manifest.json`` last, renames the directory into place and fsyncs the parent. A crash
    at any point leaves the previous checkpoint untouched and the new one either complete or
    absent (a leftover ``.tmp-*`` directory is ignored; `CheckpointManager` removes those of
    dead processes). Overwriting an existing checkpoint renames the old one aside first; a
    crash between the two renames leaves both complete, and `CheckpointManager` moves the new
    one into place. `CheckpointManager.latest` skips, with a warning, any checkpoint that has
    no manifest or whose files fail their checksums.

Safety:
    Loading never executes code from the files. DCP's own ``FileSystemReader`` (torch 2.14.1)
    reads ``.metadata`` with plain ``pickle.load``, which runs any code a crafted file asks
    for, and loads non-tensor entries with ``torch.load(weights_only=False)``; only the tensor
    data goes through ``torch.load(weights_only=True)``. functrain therefore (1) reads
    ``.metadata`` with a restricted unpickler that accepts only DCP's metadata classes,
    ``torch.Size``, dtypes, layouts and paths, and rejects anything else before it is called;
    (2) checks that every entry it loads is a tensor entry of the expected shape and dtype and
    that the index points only at files the manifest lists, and uses a load planner that
    refuses byte entries, so ``torch.load(weights_only=False)`` is never reached; tensor data
    is read with ``torch.load(weights_only=True)`` only; (3) checks the size and SHA-256 of
    every file against ``manifest.json`` before DCP opens any of them. The checksums catch
    torn writes, truncation and bit rot; they are not a signature (whoever can rewrite the
    files can rewrite the manifest), which is why (1) and (2) exist. ``meta.json`` and
    ``manifest.json`` are plain JSON.

Cost:
    Save and restore take about 1.5-2x ``torch.save`` / ``torch.load`` for a large state, most
    of it the SHA-256 pass over the files; measured figures are in ``benchmarks/README.md``
    (``benchmarks/checkpoint.py``).

Example:
    >>> import tempfile, torch, functrain as ft
    >>> state = ft.TrainState.create(torch.nn.Linear(3, 2), ft.optim.adamw(1e-3), seed=0)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = ft.checkpoint.save(f"{d}/ckpt", state, meta={"epoch": 3})
    ...     back = ft.checkpoint.restore(f"{d}/ckpt", like=state)
    ...     meta = ft.checkpoint.load_meta(f"{d}/ckpt")
    >>> torch.equal(back.params["weight"], state.params["weight"]), meta
    (True, {'epoch': 3})
"""

from ._export import export_params as export_params
from ._export import export_weights as export_weights
from ._export import load_params as load_params
from ._format import FORMAT_VERSION as FORMAT_VERSION
from ._format import CheckpointError as CheckpointError
from ._inference import best as best
from ._inference import load_weights as load_weights
from ._manager import CheckpointManager as CheckpointManager
from ._restore import load_meta as load_meta
from ._restore import restore as restore
from ._restore import verify as verify
from ._save import save as save

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointManager",
    "best",
    "export_params",
    "export_weights",
    "load_meta",
    "load_params",
    "load_weights",
    "restore",
    "save",
    "verify",
]
