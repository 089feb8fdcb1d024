"""Run work units on a pool of Ray actors, or inline with the same code.

A *worker* is any object with ``run(unit) -> result``, built by a picklable factory from its
host's model cache; each actor builds one worker per stage and takes units one at a time. The
package, by concern:

- :mod:`~augment.distributed.spec`: :class:`PoolSpec`, how units run;
- :mod:`~augment.distributed.connection`: joining Ray (:func:`connect`) and the checks that need no
  Ray session (:func:`check_pool`);
- :mod:`~augment.distributed.placement`: how many actors ask for what, and the placement errors;
- :mod:`~augment.distributed.host`: :class:`WorkerHost` (one worker per stage, one model cache) and
  the worker factory protocol;
- :mod:`~augment.distributed.actors`: the Ray actors and the driver's loop over them;
- :mod:`~augment.distributed.pool`: :class:`Pool` and :func:`run_units`, the entry points.
"""

from augment.distributed.connection import check_pool, connect, lost_cluster_error, shutdown
from augment.distributed.host import WorkerFactory, WorkerHost, ignoring_cache, torch_threads
from augment.distributed.placement import (
    fits_a_node,
    partial_placement_warning,
    placement_error,
    plan_actors,
    unplaceable,
    wants_gpu,
)
from augment.distributed.pool import Pool, run_units
from augment.distributed.spec import PoolSpec

__all__ = [
    "Pool", "PoolSpec", "WorkerFactory", "WorkerHost", "check_pool", "connect", "fits_a_node", "ignoring_cache",
    "lost_cluster_error", "partial_placement_warning", "placement_error", "plan_actors", "run_units", "shutdown",
    "torch_threads", "unplaceable", "wants_gpu",
]
