"""Leave-out refits as tasks on Dask distributed: a LocalCluster, or any running scheduler.

DVC orchestrates the stages; inside a stage, the refits of the leave-one-out ground truth (and of
the sweeps that retrain) are spread over Dask workers. :func:`connect` turns a scheduler value
into a client:

=====================  =================================================================
``None`` / ``"null"``  serial: no Dask at all (the default of ``common.scheduler``)
``"local"``            a ``LocalCluster`` with one single-threaded worker process per core
``"local:N"``          the same with ``N`` workers
``"tcp://host:port"``  a running scheduler (``dask scheduler`` + ``dask worker``, dask-jobqueue,
                       Kubernetes, ...); other Dask protocols (``tls://``, ``ucx://``) too
=====================  =================================================================

The environment variable :data:`ENV_VAR` (``ECIF_DASK_SCHEDULER``), when set and not empty,
overrides the value passed (so a pipeline can be pointed at a cluster without editing
``params.yaml``).

:func:`retrain_many` runs one refit per removal set. The problem's data (training and validation
objectives, ``theta_hat``, the preconditioner) is **scattered once** to every worker
(``client.scatter(..., broadcast=True)``); each task receives that handle and its removal set
only, so it is self-contained and nothing large is shipped per task. Each task runs the same
function as the serial loop (:func:`refit_one`), in float64 with a fixed torch thread count
(the caller's, 1 in the kit), from the same warm start: results are bit-identical to the serial
run and come back in input order whatever order the tasks finish in.

:func:`map_shared` is the general form that :func:`retrain_many` and the sensitivity sweeps
(:mod:`ecif.experiments.sensitivity`: one task per damping, ``lam`` or batch-size setting) use:
``fn(shared, item, *args)`` for each item, ``shared`` scattered once, each call under the same
fixed torch thread count, results in input order, serial without a client.

Dask is imported only when a client is made or used: the serial path does not need it.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager

import numpy as np
import torch

from ecif.core.evaluate import validation_loss
from ecif.experiments.progress import Progress
from ecif.experiments.scheduler_spec import ENV_VAR, FORMS, LOCAL, resolve_address

__all__ = ["ENV_VAR", "close", "connect", "map_shared", "refit_one", "resolve_address", "retrain_many"]

def connect(address=None, *, timeout: float = 10.0, env: bool = True):
    """A ``distributed.Client`` for ``address`` (see the module docstring), or ``None`` for serial.

    ``"local"``/``"local:N"`` start a ``LocalCluster`` of single-threaded worker processes that
    the client owns (``close(client)`` stops it). A scheduler address that does not answer
    within ``timeout`` seconds raises ``ConnectionError`` naming the address and the fix."""
    addr = resolve_address(address, env=env)
    if addr is None:
        return None
    from distributed import Client

    local = LOCAL.fullmatch(addr)
    if local:
        import dask

        n = int(local.group(1)) if local.group(1) else (os.cpu_count() or 1)
        # Dask's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536 (less fragmentation for
        # big arrays); the refits allocate many small tensors, and with it they ran 5x slower
        # here. The thread variables (OMP/MKL/OpenBLAS = 1) stay.
        environ = {k: v for k, v in (dask.config.get("distributed.nanny.pre-spawn-environ", None) or {}).items()
                   if k != "MALLOC_TRIM_THRESHOLD_"}
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            return Client(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                          silence_logs=logging.ERROR)
    try:
        return Client(addr, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise ConnectionError(
            f"no Dask scheduler answered at {addr} within {timeout:g} s ({exc}). Fix: start one there "
            f"(`dask scheduler`, then `dask worker {addr}` on each machine), correct the address in "
            f"common.scheduler or {ENV_VAR}, or use `local` (a cluster on this machine) or null (serial)."
        ) from exc


def close(client) -> None:
    """Close a client from :func:`connect` (and the LocalCluster it started); ``None`` is fine."""
    if client is not None:
        client.close()


@contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _call(fn, shared, item, args: tuple, threads: int):
    """``fn(shared, item, *args)`` with ``threads`` torch threads (one task of :func:`map_shared`)."""
    with _threads(threads):
        return fn(shared, item, *args)


def map_shared(fn, shared, items, *args, client=None, threads: int | None = None,
               progress: bool | Progress = True, label: str = "task") -> list:
    """``[fn(shared, item, *args) for item in items]``, serial without ``client``, else one Dask
    task per item.

    ``fn`` must be a module-level function (workers import it by name). ``shared`` (any picklable
    object: objectives, features, a Hessian) is **scattered once** to every worker and each task
    receives that handle, its item and ``args`` only, so nothing large travels per task.
    ``threads``: torch threads of every call (default: the caller's current count), so the serial
    and distributed runs compute the same way and give bit-identical results. ``progress``:
    ``True`` prints sparse ``<label> i/N`` lines (:class:`~ecif.experiments.progress.Progress`),
    ``False`` nothing, or a ``Progress`` of your own. Returns the results in input order,
    whatever order the tasks finish in."""
    items = list(items)
    threads = torch.get_num_threads() if threads is None else int(threads)
    bar = progress if isinstance(progress, Progress) else Progress(len(items), label, enabled=bool(progress))
    if client is None:
        out = []
        for item in items:
            out.append(_call(fn, shared, item, args, threads))
            bar.step()
        return out

    from distributed import as_completed

    [handle] = client.scatter([shared], broadcast=True, hash=False)
    try:
        futures = [client.submit(_call, fn, handle, item, args, threads, pure=False) for item in items]
        for _ in as_completed(futures):
            bar.step()
        return client.gather(futures)
    finally:
        client.cancel([handle])


def refit_one(shared: dict, remove, options: dict) -> dict:
    """One leave-out refit, self-contained: ``shared`` holds ``objective``, ``theta_hat``,
    ``preconditioner`` and optionally ``val_objective`` and ``base_val_loss``; ``options`` the
    keyword arguments of :func:`~ecif.experiments.retraining.retrain` plus ``threads``.

    Returns ``grad_norm``, ``iterations``, ``converged``, ``seconds`` and, with a validation
    objective, ``val_loss`` and ``actual`` (its change); ``theta`` if ``options["keep_theta"]``."""
    from ecif.experiments.retraining import retrain  # retraining imports this module

    opts = dict(options)
    threads, keep_theta = int(opts.pop("threads", 1)), bool(opts.pop("keep_theta", False))
    with _threads(threads):
        t0 = time.perf_counter()
        res = retrain(shared["objective"], shared["theta_hat"], remove,
                      preconditioner=shared.get("preconditioner"), **opts)
        seconds = time.perf_counter() - t0
        row = {"grad_norm": res.grad_norm, "iterations": res.iterations, "converged": bool(res.converged),
               "seconds": seconds}
        if shared.get("val_objective") is not None:
            row["val_loss"] = validation_loss(shared["val_objective"], res.theta)
            row["actual"] = row["val_loss"] - shared["base_val_loss"]
    if keep_theta:
        row["theta"] = res.theta
    return row


def retrain_many(objective, theta_hat: torch.Tensor, removals, *, val_objective=None, client=None,
                 init: str = "warm", gtol: float = 1e-9, max_iter: int = 200, method: str = "auto",
                 preconditioner=None, threads: int | None = None, keep_theta: bool = False,
                 progress: bool | Progress = True, label: str = "refit") -> list[dict]:
    """Refit without each removal set of ``removals`` (index arrays, masks, or single indices):
    one :func:`refit_one` per set, serial without ``client``, else one Dask task each.

    ``threads``: torch threads of every refit (default: the caller's current count, so the serial
    and distributed runs compute the same way). ``progress``: ``True`` prints sparse
    ``refit i/N`` lines (:class:`~ecif.experiments.progress.Progress`), ``False`` nothing, or a
    ``Progress`` of your own. Returns one dict per set, in input order."""
    sets = [np.atleast_1d(np.asarray(r)) for r in removals]
    options = {"init": init, "gtol": gtol, "max_iter": max_iter, "method": method,
               "threads": torch.get_num_threads() if threads is None else int(threads), "keep_theta": keep_theta}
    shared = {"objective": objective, "theta_hat": torch.as_tensor(theta_hat, dtype=torch.float64, device=objective.device),
              "preconditioner": preconditioner, "val_objective": val_objective}
    if val_objective is not None:
        shared["base_val_loss"] = validation_loss(val_objective, shared["theta_hat"])
    return map_shared(refit_one, shared, sets, options, client=client, threads=options["threads"],
                      progress=progress, label=label)
