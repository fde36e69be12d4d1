"""A 16-run grid on the local executor vs the Dask executor (a LocalCluster), and what
streaming a run to the driver costs.

    python bench/dask_grid.py                      # mnist1d MLP, 1000 steps, 2 workers, 3 rounds
    python bench/dask_grid.py --steps 2000 --repeats 5
    python bench/dask_grid.py --quick              # smoke run

Both executors get the same number of worker processes (one torch thread each on two cores)
and are warmed up first (process start-up is reported apart). Rounds alternate local and
Dask so that a change in the machine's load hits both; the best round of each is the least
disturbed by other work on a shared machine. Then one run is trained on a Dask
worker with a ``StreamSink`` whose queue is timed: the messages, bytes and seconds the
worker spends handing records to the driver, and the seconds the driver spends writing them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import msgpack

from grafting_core.lab.experiments.common import LAB_OPTIMIZERS
from grafting_core.lab.experiments.grid import grid
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.dask_executor import DaskExecutor, StreamSink
from grafting_core.lab.runs.executor import LocalExecutor
from grafting_core.lab.runs.runner import RunTicket, StoreSink, create_run, prepare_run, train
from grafting_core.lab.store.run_store import RunStore

OPTIMIZERS = {name: LAB_OPTIMIZERS[name] for name in ("sgd", "adam", "adagrad", "rmsprop")}


def started(kind: str, root: str, workers: int, dataset: str) -> tuple[object, float]:
    """An executor of ``kind`` with its workers warm, and the seconds that took."""
    began = time.perf_counter()
    executor = (
        LocalExecutor(root, workers) if kind == "local" else DaskExecutor(root, n_workers=workers)
    )
    for future in executor.warm_up([dataset]):
        future.result()
    return executor, time.perf_counter() - began


def timed_grid(executor, root: str, base: RunConfig) -> float:
    """Wall seconds of one 16-run grid (4 optimizers, every M#D pair, one seed)."""
    store = RunStore(root)
    began = time.perf_counter()
    _, table = grid(store, base, OPTIMIZERS, executor=executor)
    wall = time.perf_counter() - began
    assert len(table) == 16 and (table["status"] == "finished").all(), table["status"]
    store.close()
    return wall


class TimedQueue:
    """A Dask queue that counts the bytes put in it, and how long ``put`` blocks."""

    def __init__(self, queue) -> None:
        self.queue, self.seconds, self.bytes = queue, 0.0, 0

    def put(self, message) -> None:
        began = time.perf_counter()
        self.queue.put(message)
        self.seconds += time.perf_counter() - began
        self.bytes += len(msgpack.packb(message))


def streamed_run(ticket: RunTicket, queue_name: str) -> dict[str, float]:
    """On a worker: train ``ticket`` into a timed StreamSink; what the streaming cost."""
    from distributed import Event, Queue

    queue = TimedQueue(Queue(queue_name))
    sink = StreamSink(queue, "bench", Event("bench-stop"), lambda: False)
    began = time.perf_counter()
    status = train(ticket, sink)
    return {
        "status": status,
        "train_s": time.perf_counter() - began,
        "put_s": queue.seconds,
        "messages": sink.sent,
        "bytes": queue.bytes,
    }


def streaming_cost(root: str, base: RunConfig, workers: int) -> dict[str, float]:
    """One adam#sgd run trained on a Dask worker, its records written here as the driver
    does (the write seconds are timed on this side)."""
    from distributed import Queue

    store = RunStore(root)
    config = base.replace(magnitude="adam", direction="sgd", direction_hparams={"lr": 0.1})
    run_id = create_run(store, config)
    executor = DaskExecutor(root, n_workers=workers)
    try:
        for future in executor.warm_up([base.dataset]):
            future.result()
        queue = Queue("bench-stream", client=executor.client)
        future = executor.client.submit(
            streamed_run, prepare_run(store, run_id), "bench-stream", pure=False
        )
        sink, write_s, received = StoreSink(store, run_id), 0.0, 0
        while not future.done() or received < future.result()["messages"]:
            for _, _, method, args, kwargs in (m for put in queue.get(batch=True) for m in put):
                began = time.perf_counter()
                getattr(sink, method)(*args, **kwargs)
                write_s += time.perf_counter() - began
                received += 1
            time.sleep(0.05)
        cost = future.result() | {"write_s": write_s}
    finally:
        executor.shutdown()
    assert store.run(run_id)["status"] == "finished"
    store.close()
    return cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist1d")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of (local, dask)")
    parser.add_argument("--quick", action="store_true", help="tiny runs: a smoke test")
    args = parser.parse_args()
    steps, repeats = (20, 1) if args.quick else (args.steps, args.repeats)
    base = RunConfig(
        dataset=args.dataset,
        steps=steps,
        eval_every=max(1, steps // 2),
        width=16 if args.quick else 0,
    )
    print(
        f"{args.dataset}, {steps} steps, 16 runs (4 optimizers, every M#D), "
        f"{args.workers} workers; load before: {os.getloadavg()[0]:.2f}"
    )
    walls: dict[str, list[float]] = {"local": [], "dask": []}
    with tempfile.TemporaryDirectory() as tmp:
        executors = {}
        for kind in walls:
            executors[kind], startup = started(kind, tmp, args.workers, args.dataset)
            print(f"start-up {kind}: {startup:.1f} s (workers, torch, the dataset)")
        try:
            for round_ in range(repeats):
                for kind, executor in executors.items():
                    walls[kind].append(timed_grid(executor, tmp, base))
                    print(f"round {round_ + 1} {kind}: {walls[kind][-1]:.2f} s")
        finally:
            for executor in executors.values():
                executor.shutdown()
        for name, pick in (("median", statistics.median), ("best", min)):
            local, dask = (pick(walls[kind]) for kind in ("local", "dask"))
            print(
                f"grid wall, {name} of {repeats}: local {local:.2f} s, dask {dask:.2f} s; "
                f"dask/local {dask / local:.3f} (overhead {100 * (dask / local - 1):+.1f}%, "
                f"target <= +10%)"
            )
        cost = streaming_cost(tmp, base, args.workers)
    print(
        f"streaming one run ({steps} steps): {cost['messages']} messages, "
        f"{cost['bytes'] / 1e6:.2f} MB; worker blocked in put {cost['put_s'] * 1e3:.0f} ms "
        f"of {cost['train_s']:.2f} s training ({100 * cost['put_s'] / cost['train_s']:.1f}%); "
        f"driver writing {cost['write_s'] * 1e3:.0f} ms"
    )
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
