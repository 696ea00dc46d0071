"""The Ray executor: the runner's task function on a Ray cluster (``gcert run --executor ray``, the ``ray`` extra).

The run's :class:`~gcert.runner.RunConfig` goes into Ray's object store once; each Ray worker process builds its
:class:`~gcert.runner.Context` from it once (a cache keyed by the object's id) and then runs tasks with the same
``_run_task`` the local pool uses. Records come back to the driver as tasks finish and the driver alone writes them,
each task once: a worker that dies mid-task costs a retry of that task (Ray's ``max_retries``), never a lost or
duplicated record.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gcert.errors import GcertError, one_line

if TYPE_CHECKING:
    from gcert.certificate import Certificate
    from gcert.runner import Context, Task

INSTALL_HINT = "pip install 'gcert[ray]'"
TASK_RETRIES = 3
"""How often a task whose worker process died is run again before it is recorded as ``unknown``."""
IN_FLIGHT_PER_CPU = 2
LOCAL_OBJECT_STORE_BYTES = 256 * 1024**2
"""Object store of a Ray instance gcert starts itself: the config (and an in-memory model or data) is all it holds."""

_RAY_CONTEXT: tuple[str, Any] | None = None  # (object id of the config, the Context built from it), per Ray worker


def require_ray() -> Any:
    """The ``ray`` module, or a one-line :class:`GcertError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise GcertError(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def _solve_on_worker(config_box: list[Any], task: Task, seq: int) -> Certificate:
    """The body of the Ray task: build this worker's Context once per config, then run the runner's task function.

    ``config_box`` holds the config's ObjectRef inside a list, so Ray hands over the reference and the worker
    fetches (and unpickles) the config only the first time it sees it.
    """
    global _RAY_CONTEXT
    import ray

    from gcert import runner

    ref = config_box[0]
    key = ref.hex()
    if _RAY_CONTEXT is None or _RAY_CONTEXT[0] != key:
        config = ray.get(ref)
        try:
            runner._init_worker(config)
        except ValueError:  # signal handlers can only be set in a main thread; Ray may run tasks elsewhere
            import torch

            torch.set_num_threads(1)
            runner._WORKER = runner.Context(config)
        _RAY_CONTEXT = (key, runner._WORKER)
    runner._WORKER = _RAY_CONTEXT[1]
    return runner._run_task(task, seq)


def run_ray(ctx: Context, tasks: list[Task], record: Callable[[Certificate], None], warn: Callable[[str], None],
            address: str | None = None, workers: int | None = None) -> None:
    """Run ``tasks`` on Ray, calling ``record`` in the driver once per task, in the order they finish.

    ``address``: an existing cluster (``ray start --head``; ``host:port`` or ``auto``); without it a local Ray
    instance with ``workers`` CPUs (default: this machine's) starts and stops with the run.
    """
    ray = require_ray()
    started_here = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address is None:
            kwargs.update(num_cpus=workers or os.cpu_count() or 1, object_store_memory=LOCAL_OBJECT_STORE_BYTES)
        try:
            ray.init(address=address, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure to connect is the user's address or cluster
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise GcertError(f"could not start or reach {where}: {one_line(exc)}; check --ray-address "
                             "(`ray status` on the head shows it)") from None
        started_here = True
    try:
        _dispatch(ray, ctx, tasks, record, warn, workers)
    finally:
        if started_here:
            ray.shutdown()


def _dispatch(ray: Any, ctx: Context, tasks: list[Task], record: Callable[[Certificate], None],
              warn: Callable[[str], None], workers: int | None) -> None:
    remote = ray.remote(num_cpus=1, max_retries=TASK_RETRIES, retry_exceptions=False)(_solve_on_worker)
    box = [ray.put(ctx.config)]
    cpus = int(ray.cluster_resources().get("CPU", 1)) or 1
    limit = IN_FLIGHT_PER_CPU * (min(workers, cpus) if workers else cpus)
    queue = list(enumerate(tasks))[::-1]  # popped from the end, in order
    running: dict[Any, tuple[int, Task]] = {}
    written: set[str] = set()
    # No ``ray.cancel`` on Ctrl-C or error: cancelling a task whose reply is in flight aborts the driver inside
    # Ray (RAY_CHECK "Tried to complete task that was not pending", ray-project/ray#54527; seen here with Ray 2.60
    # when a worker had just been killed). The job's workers are stopped by Ray when the driver disconnects
    # (``ray.shutdown`` in ``run_ray``, or the driver's exit), and every record written so far is already on disk.
    while queue or running:
        while queue and len(running) < limit:
            seq, task = queue.pop()
            running[remote.remote(box, task, seq)] = (seq, task)
        done, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
        for ref in done:
            _seq, task = running.pop(ref)
            cert = _result(ray, ref, ctx, task, warn)
            if cert.key in written:  # cannot happen: one ObjectRef per task, each resolves once
                continue
            written.add(cert.key)
            record(cert)


def _result(ray: Any, ref: Any, ctx: Context, task: Task, warn: Callable[[str], None]) -> Certificate:
    """The task's record; a task Ray gave up on (its worker died ``TASK_RETRIES + 1`` times, or a bug outside
    ``Context.solve``) becomes an ``unknown`` record saying so."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        error = f"the Ray task failed: {one_line(exc.cause if exc.cause is not None else exc)}"
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError,
            ray.exceptions.TaskCancelledError) as exc:
        error = (f"the Ray worker running this task died {TASK_RETRIES + 1} times ({type(exc).__name__}); rerun "
                 "with fewer tasks per node, or check the nodes' memory")
    except ray.exceptions.RayError as exc:
        error = f"Ray lost this task: {one_line(exc)}"
    from gcert.runner import _describe

    warn(f"{_describe(task)}: {error}; recorded as unknown")
    cert = ctx.blank(task, error)
    cert.seconds = 0.0
    return cert

