"""Run by test_xla_spmd.py in a process of its own (SPMD and the device count are fixed when
torch_xla's runtime starts): train with fit(compile_step(..., devices="all")) and save what the
test compares."""

import sys

import torch
import torch_xla  # noqa: F401  (imported first: fit switches it to SPMD)

import functrain as ft

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import test_xla_spmd as T  # noqa: E402

out = sys.argv[1]
run = ft.compile_step(T.step, device="xla", devices="all")
state = ft.fit(run, T.fresh_state(), T.loader(),
               epochs=2, callbacks=[ft.Logging(every=4, loggers=[T.ListLogger()], summary=False)])
batch = run.place_batch(next(iter(T.loader())))
torch.save({"state": ft.tree.leaves_with_path(T.on_cpu(state), "state"),
            "sharding": torch_xla._XLAC._get_xla_sharding_spec(batch[0]),
            "devices": __import__("torch_xla.runtime").runtime.global_runtime_device_count(),
            "losses": T.ListLogger.last.losses}, out)
