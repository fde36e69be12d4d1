"""Graft under DDP and FSDP2 on 2 CPU processes (gloo) against the same run in one process.

One module fixture spawns the 2 ranks once (``tests/library/distributed_worker.py`` runs every
scenario, ~10 s here); each test then checks one scenario against its one-process twin,
computed independently in this process on the whole global batch.
"""

from __future__ import annotations

import socket
from collections import Counter

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from grafting_core import Graft, NormLog, static_ratios_from_log

from . import distributed_worker as dw

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is not available",
)
RTOL = 1e-5
ALL_REDUCE = "c10d.allreduce_"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _extras() -> dict:
    """A recorded Adam schedule and static ratios, from a one-process Adam#SGD run."""
    model = dw.make_model()
    opt = dw.build("native", model, {})
    log = dw.train(model, opt)
    return {
        "schedule": log.magnitude_schedule().to_dict(),
        "ratios": static_ratios_from_log(log, window=(5, 20)).to_dict(),
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``(single, ranks)``: one-process results per scenario and each rank's saved results."""
    out = tmp_path_factory.mktemp("distributed")
    extras = _extras()
    mp.spawn(dw.worker, args=(dw.WORLD, _free_port(), str(out), extras), nprocs=dw.WORLD, join=True)
    kinds = {"native", "blackbox", *dw.FSDP_KINDS} - {"hsdp"}
    single = {kind: dw.single_run(kind, extras) for kind in kinds}
    single["hsdp"] = single["native"]
    return single, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(dw.WORLD)]


def _relative(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[n].double() - b[n].double()).norm() / b[n].double().norm()) for n in b)


@pytest.mark.parametrize("kind", ["native", "blackbox"])
def test_ddp_matches_one_process_and_ranks_agree(runs, kind):
    single, ranks = runs
    result = ranks[0][f"ddp_{kind}"]
    assert _relative(result["weights"], single[kind]["weights"]) < RTOL
    for name, weight in result["weights"].items():  # replicated: bit-identical on every rank
        assert torch.equal(weight, ranks[1][f"ddp_{kind}"]["weights"][name])
    torch.testing.assert_close(result["norms"], single[kind]["norms"], rtol=RTOL, atol=1e-7)
    assert result["step_comms"] == {}  # Graft adds no communication under DDP


@pytest.mark.parametrize("kind", [k for k in dw.FSDP_KINDS if k != "static"])
def test_fsdp2_graft_matches_one_process(runs, kind):
    """Weights within 1e-5 and rank 0's whole-layer norms equal one process's, uneven shards."""
    single, ranks = runs
    result = ranks[0][f"fsdp_{kind}"]
    assert result["sharded"]
    assert "Shard(dim=0)" in result["placements"][0]
    assert _relative(result["weights"], single[kind]["weights"]) < RTOL
    torch.testing.assert_close(result["norms"], single[kind]["norms"], rtol=RTOL, atol=1e-7)
    torch.testing.assert_close(ranks[1][f"fsdp_{kind}"]["norms"], result["norms"], rtol=0, atol=0)


def test_hsdp_mesh_sums_over_the_shard_dimension_only(runs):
    assert runs[1][0]["fsdp_hsdp"]["placements"][0] == "(Replicate(), Shard(dim=0))"


def test_row_column_and_replicated_dtensors_give_whole_norms(runs):
    """Shard(0), Shard(1) and Replicate() on one mesh: replicated biases are counted once."""
    single, ranks = runs
    for rank, result in enumerate(ranks):
        mixed = result["dtensor_mixed"]
        assert set(mixed["placements"]) == {"(Shard(dim=0),)", "(Shard(dim=1),)", "(Replicate(),)"}
        expected = tuple(1.0 if "Shard" in p else 0.0 for p in mixed["placements"])
        assert mixed["weights_mask"] == (None if rank == 0 else expected)  # None: all count
        assert _relative(mixed["weights"], single["native"]["weights"]) < RTOL
        torch.testing.assert_close(mixed["norms"], single["native"]["norms"], rtol=RTOL, atol=1e-7)


def test_fsdp2_state_dict_round_trip_resumes(runs):
    """Children's states stay DTensor shards; a rebuilt, restored Graft continues the run."""
    single, ranks = runs
    resumed = ranks[0]["fsdp_resume"]
    assert resumed["state_type"] == "DTensor"
    assert _relative(resumed["weights"], single["native"]["weights"]) < RTOL
    torch.testing.assert_close(resumed["norms"], single["native"]["norms"], rtol=RTOL, atol=1e-7)


def test_fsdp2_dcp_save_load_resumes_exactly(runs):
    """dcp.save / dcp.load to a folder on 2 ranks: the resumed run is the uninterrupted one,
    and taking the state left M's moments and step counts as they were."""
    single, ranks = runs
    for rank in ranks:
        resumed = rank["fsdp_dcp"]
        assert resumed["untouched"]
        assert resumed["step_after_load"] == dw.STEPS // 2
        assert resumed["saved_keys"] == [
            "direction.momentum_buffer",
            "direction.step",
            "graft.nonfinite_skips",
            "graft.step",
            "magnitude.exp_avg",
            "magnitude.exp_avg_sq",
            "magnitude.step",
        ]
        assert _relative(resumed["weights"], single["native"]["weights"]) < RTOL
        torch.testing.assert_close(
            resumed["norms"], single["native"]["norms"], rtol=RTOL, atol=1e-7
        )


def test_static_ratio_sgd_groups_under_fsdp2(runs):
    single, ranks = runs
    assert _relative(ranks[0]["fsdp_static"]["weights"], single["static"]["weights"]) < RTOL


def test_one_all_reduce_per_grafted_step(runs):
    """The optimizer step's only collective is one all_reduce; FSDP's own are unchanged."""
    checks = runs[1][0]["checks"]
    for kind in ("native", "blackbox"):
        assert checks[f"step_{kind}"] == {ALL_REDUCE: 1}
        assert ALL_REDUCE not in checks[f"fwd_bwd_{kind}"]
    assert checks["host_syncs_native"] == 0  # the sharded native step never waits on the host
    graft, adam = Counter(checks["train_step_graft"]), Counter(checks["train_step_adam"])
    assert graft - adam == Counter({ALL_REDUCE: 1}) and not adam - graft
    assert adam[ALL_REDUCE] == 0 and adam["c10d._reduce_scatter_base_"] > 0


@pytest.mark.parametrize(
    "key,pattern",
    [
        ("error_lars", "'lars'.*trust ratios.*DDP"),
        ("error_lamb_blackbox", "'lamb'.*trust ratios"),
        ("error_adafactor", "Adafactor as direction.*factored"),
        ("error_unknown", "OptInSGD as direction.*supports_dtensor = True"),
        ("error_mixed", "all its parameters to be DTensors.*'extra'"),
    ],
)
def test_unsupported_combinations_fail_at_construction(runs, key, pattern):
    import re

    message = runs[1][0]["checks"][key]
    assert message is not None and re.search(pattern, message, re.S), message


def test_nonfinite_shard_skips_the_layer_on_every_rank(runs):
    ranks = runs[1]
    checks = [r["checks"] for r in ranks]
    names = checks[0]["layer_names"]
    moved = set(names) - {"fc2.weight"}
    for check in checks:
        assert set(check["nonfinite_moved"]) == moved
        assert check["nonfinite_norms"][names.index("fc2.weight"), 5] == 1
        assert int(check["nonfinite_skips"].sum()) == 1
    torch.testing.assert_close(
        checks[0]["nonfinite_norms"], checks[1]["nonfinite_norms"], rtol=0, atol=0, equal_nan=True
    )


def test_single_process_graft_never_detects_sharding():
    """Plain tensors: no sharding object, so the step takes the unchanged reference path."""
    model = dw.make_model()
    opt = Graft(model.named_parameters(), dw.ADAM, dw.SGD)
    NormLog(opt)
    assert opt._sharding is None and opt.magnitude._sharded is False
