"""Where the actors go (pure planning) and the one-line errors of actors that cannot be placed.

Placement is by request, not by what happens to be up: ``workers`` is the number of actors (never
more than units), whatever the cluster holds when the job starts, so an autoscaler sees the whole
demand. Each actor asks for ``gpus_per_worker`` GPUs (fractions share a GPU) when the device
wants CUDA: ``cuda``/``cuda:N`` always; ``auto`` when the connected cluster has GPUs now or its
autoscaler config lists GPU node types; ``cpu`` never. CPU actors split the cluster's cores
between them; every unit runs with ``PoolSpec.threads`` torch threads, inline or on an actor, so
that the worker count does not change a result's bytes (without it, an actor's share of cores).
When no actor is usable and no node of the cluster could hold one for ``placement_timeout``
seconds (an autoscaler did not add one), the run stops with one error naming the missing
resource; at once on a private local Ray, which no node will ever join. A cluster that could
hold the actors but is busy, or slow to start them, is waited for. When some actors work and
others have not started within ``placement_timeout``, one warning line says so and the run goes
on with fewer (the others join when they start).
"""

from __future__ import annotations

from augment.errors import AugmentError


def wants_gpu(device: str, resources: dict[str, float], max_resources: dict[str, float] | None = None) -> bool:
    """Whether the actors ask for GPUs: ``cuda[:N]`` always, ``cpu`` never, ``auto`` when the
    cluster has GPUs now or its autoscaler can add GPU nodes (``max_resources``)."""
    if device.startswith("cuda"):
        return True
    if device != "auto":
        return False
    return resources.get("GPU", 0) > 0 or (max_resources or {}).get("GPU", 0) > 0


def plan_actors(resources: dict[str, float], workers: int, n_units: int, device: str, cpus: int,
                gpus_per_worker: float = 1.0,
                max_resources: dict[str, float] | None = None) -> tuple[int, dict[str, float], int]:
    """How many actors, with which Ray resource requests, and how many torch threads each.

    ``workers`` actors (never more than units): the request, not what happens to be up, so an
    autoscaling cluster whose head alone is up still gets GPU actors and starts GPU nodes for them.
    GPU actors (:func:`wants_gpu`) ask for ``gpus_per_worker`` GPUs and one CPU each (Ray sets
    CUDA_VISIBLE_DEVICES). CPU actors share the cluster's current cores (``resources``, else
    ``cpus``) and ask for a little less than their share so that they still start while the
    driver holds part of a core.
    """
    total = int(resources.get("CPU", cpus)) or 1
    n_actors = max(1, min(workers, n_units))
    per = max(1, total // n_actors)
    if wants_gpu(device, resources, max_resources):
        return n_actors, {"num_gpus": gpus_per_worker, "num_cpus": 1}, per
    return n_actors, {"num_cpus": min(per, max(0.5, total / n_actors - 0.01))}, per


def _request(options: dict[str, float]) -> str:
    """``GPU: 1, CPU: 1`` for an actor's resource options (what ``ray status`` calls them)."""
    names = {"num_gpus": "GPU", "num_cpus": "CPU"}
    return ", ".join(f"{names.get(k, k)}: {v:g}" for k, v in options.items())


def unplaceable(options: dict[str, float], resources: dict[str, float],
                max_resources: dict[str, float] | None, private: bool) -> str | None:
    """The resource no actor can ever get (``"GPU"``), or None while one may still come.

    A private local Ray is this machine and nothing else; a cluster whose autoscaler config is
    known cannot grow past it. Any other cluster may add nodes, so only the timeout decides.
    """
    for key, name in (("num_gpus", "GPU"), ("num_cpus", "CPU")):
        need = options.get(key, 0)
        if not need or resources.get(name, 0) >= need:
            continue
        if private or (max_resources is not None and max_resources.get(name, 0) < need):
            return name
    return None


def fits_a_node(options: dict[str, float], nodes: list[dict[str, float]]) -> bool:
    """Whether one of ``nodes`` (each node's total resources) could ever hold an actor asking for
    ``options``. While none can, the actors wait for a node that is not there (the autoscaler's
    to add); while one can, they only wait for their turn or for a worker process to start."""
    need = {"GPU": options.get("num_gpus", 0), "CPU": options.get("num_cpus", 0)}
    return any(all(node.get(k, 0) >= v for k, v in need.items() if v) for node in nodes)


def placement_error(options: dict[str, float], n_actors: int, waited: float | None = None,
                    private: bool = False) -> AugmentError:
    """The one error for actors that cannot be placed: what they asked for, why, and the fix.

    ``waited``: the seconds the pool waited in vain; None when it is known at once that nothing
    will ever offer it (``private``: a private local Ray, else the autoscaler's node types).
    """
    gpu = "num_gpus" in options
    what = f"{_request(options)} for the {n_actors} augment worker{'s' if n_actors != 1 else ''}"
    if waited is not None:
        why = f"after {waited:.0f} s"
    elif private:
        why = f"(this machine has {'no GPU' if gpu else 'too few CPUs'} and no Ray cluster is connected)"
    else:
        why = "(neither the cluster's nodes nor its autoscaler's node types have it)"
    if gpu:
        fix = ("pass --device cpu, or --address of a Ray cluster with GPU nodes" if private else
               "add GPU nodes (cluster.yaml gpu_worker), lower --gpus-per-worker, or pass --device cpu")
    else:
        fix = "lower --workers" if private else "add worker nodes or lower --workers"
    tail = " (--placement-timeout sets the wait)" if waited is not None else ""
    return AugmentError(f"no Ray node offers {what} {why}; {fix}{tail}")


def partial_placement_warning(options: dict[str, float], working: int, wanted: int, waited: float) -> str:
    """The one line for a pool that got only some of its actors: how many, what the others wait for."""
    return (f"only {working} of {wanted} augment workers started within {waited:.0f} s (the others wait for a "
            f"Ray node with {_request(options)}); going on with {working}, the rest join when they start")
