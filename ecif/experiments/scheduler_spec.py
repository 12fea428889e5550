"""The grammar of the scheduler value (``common.scheduler``), without importing torch or Dask.

One definition, used by the parameter check (:mod:`ecif.kit.params`, which must stay light)
and by :mod:`ecif.experiments.distributed` (which connects):

=====================  =================================================================
``None`` / ``"null"``  serial (also ``""``, ``"none"``, ``"serial"``)
``"local"``            a ``LocalCluster`` with one single-threaded worker process per core
``"local:N"``          the same with ``N >= 1`` workers
``"tcp://host:port"``  a running scheduler; other Dask protocols (``tls``, ``ucx``, ``inproc``,
                       ``ws``, ``wss``) too
=====================  =================================================================

:data:`ENV_VAR` (``ECIF_DASK_SCHEDULER``), when set and not empty, overrides the value.
"""

from __future__ import annotations

import os
import re

__all__ = ["ENV_VAR", "FORMS", "LOCAL", "REMOTE", "SERIAL", "resolve_address", "scheduler_problem"]

#: Environment variable that overrides the scheduler value (``common.scheduler``).
ENV_VAR = "ECIF_DASK_SCHEDULER"
#: Spellings of "no scheduler" (compared after strip and lower-casing).
SERIAL = ("", "null", "none", "serial")
#: ``local`` or ``local:N``; group 1 is ``N`` when given.
LOCAL = re.compile(r"local(?::([1-9][0-9]*))?")
#: An address of a running scheduler.
REMOTE = re.compile(r"(tcp|tls|ucx|inproc|ws|wss)://\S+")
#: The accepted forms, as error messages name them.
FORMS = "null (serial), local, local:N (N workers), tcp://host:port (a running Dask scheduler)"


def scheduler_problem(value) -> str | None:
    """``None`` if ``value`` is a well-formed scheduler value (nothing is contacted), else a
    phrase saying what is wrong and which forms are accepted."""
    if value is None:
        return None
    text = str(value).strip()
    if text.lower() in SERIAL or LOCAL.fullmatch(text) or REMOTE.fullmatch(text):
        return None
    return f"is not a scheduler (forms: {FORMS})"


def resolve_address(address=None, *, env: bool = True) -> str | None:
    """The scheduler value in effect: :data:`ENV_VAR` if set (and ``env``), else ``address``;
    ``None`` for serial, else ``"local"``, ``"local:N"`` or a scheduler address. Raises
    ``ValueError`` naming where the bad value came from and the accepted forms."""
    if env and os.environ.get(ENV_VAR, "").strip():
        address, source = os.environ[ENV_VAR].strip(), f"the environment variable {ENV_VAR}"
    else:
        source = "the scheduler value (common.scheduler)"
    if address is None:
        return None
    text = str(address).strip()
    if scheduler_problem(text) is not None:
        raise ValueError(f"{source} is {address!r}, which is not a scheduler. Fix: use one of {FORMS}.")
    return None if text.lower() in SERIAL else text
