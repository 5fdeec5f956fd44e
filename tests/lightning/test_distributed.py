"""Distributed runs: 2-process DDP on CPU (gloo), a failing search on rank 0, and DeepSpeed ZeRO 2/3.

Every multi-process run is a standalone script under ``tests/scripts`` started with ``subprocess``
(Lightning's "ddp" launcher re-runs the command that started it, which must never be pytest), in its
own process group, killed as a whole when its timeout expires, so nothing here can hang CI.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adapruner_lightning.search.config import SearchConfig

SCRIPTS = Path(__file__).parent / "scripts"
DDP_TIMEOUT_S = 300
DEEPSPEED_TIMEOUT_S = 300
SKIP_EXIT = 3  # tests/scripts/deepspeed_cpu.py: DeepSpeed cannot run here
MAX_STEPS = 2
_DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR",
              "MASTER_PORT", "DS_ACCELERATOR", "LOCAL_SIZE")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_script(script: str, *args: object, timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``tests/scripts/<script>`` with ``sys.executable`` in a new process group; on timeout the whole group
    (the launched ranks included) is killed and the test fails with the output so far."""
    environ = {k: v for k, v in os.environ.items() if k not in _DIST_VARS}
    environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1",
                   TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", **(env or {}))
    cmd = [sys.executable, str(SCRIPTS / script), *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environ,
                            cwd=str(SCRIPTS.parents[2]), start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{script} {args} did not finish within {timeout}s; output tail:\n{out[-6000:]}")
    finally:
        try:  # ranks left behind by a crashed launcher
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def _ranks(out: Path, n: int = 2) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(n)]


def _check_shapes_follow_plan(shapes: dict[str, list[int]], plan: dict, prefix: str = "model.layers") -> None:
    head_dim = plan["head_dim"]
    for lp in plan["layers"]:
        base = f"{prefix}.{lp['index']}"
        assert shapes[f"{base}.self_attn.q_proj.weight"][0] == lp["num_heads"] * head_dim
        assert shapes[f"{base}.self_attn.o_proj.weight"][1] == lp["num_heads"] * head_dim
        assert shapes[f"{base}.self_attn.k_proj.weight"][0] == lp["num_kv_heads"] * head_dim
        assert shapes[f"{base}.self_attn.v_proj.weight"][0] == lp["num_kv_heads"] * head_dim
        assert shapes[f"{base}.mlp.gate_proj.weight"][0] == lp["intermediate_size"]
        assert shapes[f"{base}.mlp.up_proj.weight"][0] == lp["intermediate_size"]
        assert shapes[f"{base}.mlp.down_proj.weight"][1] == lp["intermediate_size"]


# ---------------------------------------------------------------------------------------------- DDP (gloo, CPU)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, tiny_lm_dir, text_dir):
    """One 2-rank DDP fit (tests/scripts/ddp_fit.py ok) under a 30 s process-group timeout, with a search of 10
    trials held 7 s each (longer than the timeout): the ranks' records."""
    out = tmp_path_factory.mktemp("ddp_ok")
    result = run_script("ddp_fit.py", tiny_lm_dir, text_dir, out, "ok", timeout=DDP_TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-6000:]
    assert "[rank 0] DDP_FIT_OK" in result.stdout and "[rank 1] DDP_FIT_OK" in result.stdout, result.stdout[-6000:]
    return _ranks(out)


def test_ddp_ranks_apply_rank0_plan_identically_and_train(ddp_run):
    r0, r1 = ddp_run
    assert (r0["rank"], r1["rank"], r0["world_size"]) == (0, 1, 2)
    assert r0["strategy_model"] == r1["strategy_model"] == "DistributedDataParallel"
    # both ranks searched (rank 0's pruning data, broadcast), each scoring its own trials; same trace, same plan
    assert (r0["search_runs"], r1["search_runs"]) == (1, 1)
    assert r0["pruning_data_calls"] == 1
    assert r0["trace"] == r1["trace"] and [t["rank"] for t in r0["trace"]] == [0, 1] * 5
    assert r0["plan"] is not None and r0["plan"] == r1["plan"]
    assert r0["plan"]["provenance"]["search"]["world_size"] == 2
    assert abs(r0["plan"]["params_after"] / r0["plan"]["params_before"] - 0.8) < 0.01
    # identical pruned weights on both ranks before DDP's wrapper could broadcast rank 0's
    assert r0["params_after_pruning"] == r1["params_after_pruning"]
    assert r0["params_at_fit_start"] == r0["params_after_pruning"]
    assert r0["shapes"] == r1["shapes"]
    _check_shapes_follow_plan(r0["shapes"], r0["plan"], prefix="model.layers")
    # the ranks saw different batches, yet training kept them in sync and moved the weights
    assert len(r0["batches"]) == len(r1["batches"]) == MAX_STEPS
    assert set(r0["batches"]).isdisjoint(r1["batches"])
    assert r0["global_step"] == r1["global_step"] == MAX_STEPS
    assert r0["losses_finite"] and r1["losses_finite"] and len(r0["losses"]) == MAX_STEPS
    assert r0["params_after_fit"] == r1["params_after_fit"]
    changed = [n for n, h in r0["params_after_fit"].items() if h != r0["params_after_pruning"][n]]
    assert len(changed) == len(r0["params_after_fit"])
    # distillation: every rank has its own teacher, the dense weights untouched by the fine-tune, and trains on the KL
    assert r0["teacher"] == r1["teacher"] == r0["dense"]
    assert "train_kl" in r0["logged"] and "train_lm_loss" in r0["logged"]


def test_ddp_search_longer_than_the_process_group_timeout_completes(ddp_run):
    """No rank waits in one collective for longer than about one trial: the 35 s search (each rank's five
    7 s trials) outlasts the 30 s timeout that would kill a rank waiting for the other's whole search."""
    r0, r1 = ddp_run
    assert r0["search_seconds"] > 30 and r1["search_seconds"] > 30  # longer than the timeout, on every rank
    assert [t["rank"] for t in r0["trace"]].count(1) == 5  # the trials were shared, five each
    assert r0["plan"] == r1["plan"] and r0["params_after_fit"] == r1["params_after_fit"]


def test_ddp_validation_accuracy_is_synced_across_ranks(ddp_run):
    """Each rank scored half of the 6 validation items; the logged accuracy is that of all 6 (one process,
    the same final weights)."""
    r0, r1 = ddp_run
    assert set(r0["val_scores"]) == {"val/acc/austen_cloze", "val/acc_norm/austen_cloze"}
    assert r0["val_scores"] == r1["val_scores"]
    for key, value in r0["val_scores_one_process"].items():
        assert r0["val_scores"][key] == pytest.approx(value)


def test_ddp_every_rank_holds_out_the_objective_windows(ddp_run):
    r0, r1 = ddp_run
    held_out = set(r0["objective_rows"]) | set(r0["pool_rows"])
    assert held_out and held_out.isdisjoint(r0["train_rows"])
    assert held_out.isdisjoint(r1["train_rows"])
    assert r0["train_rows"] == r1["train_rows"]


def test_ddp_pruned_model_trains_in_train_mode(ddp_run):
    for record in ddp_run:
        assert record["eval_modules_after_pruning"] == []
        assert record["eval_modules_at_train_start"] == []


@pytest.mark.parametrize("mode", ["module", "loader"])
def test_ddp_defaults_with_a_users_own_module(tmp_path, tiny_lm_dir, mode):
    """Nothing set but target_ratio: the trainer's log dir (a collective) is resolved on every rank, and the
    calibration rows come from the module's loader or from fit(train_dataloaders=...); both ranks end equal."""
    out = tmp_path / mode
    result = run_script("ddp_defaults.py", tiny_lm_dir, out, mode, timeout=DDP_TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-6000:]
    r0, r1 = _ranks(out)
    assert r0["plan"] == r1["plan"] and r0["plan"]["provenance"]["search"]["trials"] == SearchConfig().trials
    assert r0["params"] == r1["params"] and r0["global_step"] == r1["global_step"] == 2
    assert r0["report_dir"] == r1["report_dir"] and (Path(r0["report_dir"]) / "report.md").is_file()


def test_ddp_search_failure_on_rank0_is_reported_on_every_rank(tmp_path, tiny_lm_dir, text_dir):
    result = run_script("ddp_fit.py", tiny_lm_dir, text_dir, tmp_path, "fail", timeout=DDP_TIMEOUT_S)
    assert result.returncode != 0, result.stdout[-6000:]
    assert "DDP_FIT_OK" not in result.stdout
    for rank in (0, 1):
        line = f"[rank {rank}] SearchFailed: adapruner: the search failed on rank 0: RuntimeError: boom"
        assert line in result.stdout, result.stdout[-6000:]
        assert (tmp_path / f"error_rank{rank}.txt").read_text() == line
    assert not (tmp_path / "rank0.json").exists() and not (tmp_path / "rank1.json").exists()


# ------------------------------------------------------------------------------------------- DeepSpeed (CPU)


@pytest.fixture(scope="module")
def deepspeed_run(tmp_path_factory, tiny_lm_dir):
    """tests/scripts/deepspeed_cpu.py for ZeRO 2 and 3 in one single-process gloo run: its record."""
    out = tmp_path_factory.mktemp("deepspeed_cpu")
    env = dict(DS_ACCELERATOR="cpu", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_SIZE="1")
    result = run_script("deepspeed_cpu.py", tiny_lm_dir, out, 2, 3, timeout=DEEPSPEED_TIMEOUT_S, env=env)
    if result.returncode == SKIP_EXIT:
        pytest.skip((out / "skip.txt").read_text())
    assert result.returncode == 0 and "DEEPSPEED_OK" in result.stdout, result.stdout[-6000:]
    return json.loads((out / "deepspeed.json").read_text())


def test_deepspeed_input_is_the_non_uniform_pruned_model(deepspeed_run, tiny_lm_dir):
    from transformers import AutoModelForCausalLM

    from adapruner_lightning.api import prune

    assert not deepspeed_run["uniform"]
    layers = deepspeed_run["plan"]["layers"]
    assert (layers[0]["num_heads"], layers[0]["intermediate_size"]) == (6, 128)  # keep_first=1
    _check_shapes_follow_plan(deepspeed_run["pruned_shapes"], deepspeed_run["plan"], prefix="model.layers")
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)  # same prune here: the script trained that model
    prune(model, None, target_ratio=0.25, metric="magnitude_l2", keep_first=1, progress=False)
    assert deepspeed_run["pruned_shapes"] == {n: list(p.shape) for n, p in model.named_parameters()}


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_trains_pruned_model_on_cpu(deepspeed_run, stage):
    record = deepspeed_run["stages"][str(stage)]
    assert len(record["losses"]) == 3 and all(math.isfinite(x) for x in record["losses"])
    assert all(record["changed"].values()) and set(record["changed"]) == set(deepspeed_run["pruned_shapes"])
    assert record["gathered_shapes"] == deepspeed_run["pruned_shapes"]
    if stage == 3:  # really partitioned: the module's own tensors are empty outside a gather
        assert record["partitioned"]
        assert all(math.prod(s) == 0 for s in record["local_shapes"].values())
    else:
        assert record["local_shapes"] == deepspeed_run["pruned_shapes"]


# ------------------------------------------------------------- Lightning DeepSpeedStrategy on the CPU (gloo)

#: (ZeRO stage, recovery, processes, resumed too, model made in configure_model)
LIGHTNING_DEEPSPEED = [(2, "lora", 1, True, False), (2, "full", 1, False, False), (3, "full", 2, True, False),
                       (3, "lora", 2, False, True)]


@pytest.fixture(scope="module", params=LIGHTNING_DEEPSPEED, ids=lambda c: f"zero{c[0]}-{c[1]}-{c[2]}proc{'-configure_model' if c[4] else ''}")
def lightning_deepspeed(request, tmp_path_factory, tiny_lm_dir, text_dir):
    """tests/lightning/scripts/deepspeed_lightning.py: a fit (and, when marked, its resume): the records."""
    stage, mode, devices, resume, late = request.param
    out = tmp_path_factory.mktemp(f"lightning_deepspeed_{stage}_{mode}")
    records = {}
    for phase in ("fit", "resume") if resume else ("fit",):
        result = run_script("deepspeed_lightning.py", tiny_lm_dir, text_dir / "alpha.txt", out, stage, mode,
                            devices, phase, *(["late"] if late else []), timeout=DEEPSPEED_TIMEOUT_S,
                            env={"DS_ACCELERATOR": "cpu"})
        assert result.returncode == 0, result.stdout[-6000:]
        for rank in range(devices):
            assert f"[rank {rank}] DEEPSPEED_LIGHTNING_OK" in result.stdout, result.stdout[-6000:]
        records[phase] = [json.loads((out / f"{phase}_rank{r}.json").read_text()) for r in range(devices)]
    return request.param, records


def test_lightning_deepspeed_prunes_trains_evaluates_and_exports_on_cpu(lightning_deepspeed):
    """Under ZeRO-3 the end of fit (merge, evaluation, export) used to export empty tensors: the evaluation ran
    inside the gather, and DeepSpeed's hooks released the gathered weights (a size-mismatch error on reload)."""
    (stage, mode, devices, _, late), records = lightning_deepspeed
    ranks = records["fit"]
    r0 = ranks[0]
    assert all(r["models_created"] == (1 if late else None) for r in ranks)  # configure_model made it once
    assert all(r["strategy_model"] == "DeepSpeedEngine" for r in ranks)
    assert r0["partitioned"] == (stage == 3)
    assert all(r["plan"] == r0["plan"] and r["shapes"] == r0["shapes"] for r in ranks)
    _check_shapes_follow_plan(r0["shapes"], r0["plan"], prefix="model.layers")
    assert r0["trace_ranks"] == [r % devices for r in range(2)]  # every rank scored trials
    assert all(r["searches"] == 1 and r["global_step"] == 3 and r["losses_finite"] for r in ranks)
    quality = r0["report"]["quality"]
    assert set(quality) == {"dense", "pruned", "recovered"}  # evaluated at the end of fit, under ZeRO-3 too
    assert quality["recovered"]["ppl/alpha"] < quality["pruned"]["ppl/alpha"]
    # the export is the recovered model: reloaded, it has the plan's shapes and scores what the callback measured
    assert r0["exported_plan"]["layers"] == r0["plan"]["layers"] and r0["exported_shapes"] == r0["shapes"]
    assert r0["exported_scores"]["ppl/alpha"] == pytest.approx(quality["recovered"]["ppl/alpha"], rel=1e-4)
    assert "epoch=0-step=3.ckpt" in r0["checkpoints"] and "pruning_plan.json" in r0["checkpoints"]


def test_lightning_deepspeed_resumes_its_checkpoint_without_searching(lightning_deepspeed):
    (stage, _, _, resume, _), records = lightning_deepspeed
    if not resume:
        pytest.skip("this configuration is not resumed (see LIGHTNING_DEEPSPEED)")
    fit, resumed = records["fit"][0], records["resume"]
    assert all(r["searches"] == 0 and r["global_step"] == 5 and len(r["losses"]) == 2 for r in resumed)
    assert all(r["plan"] == fit["plan"] and r["shapes"] == fit["shapes"] for r in resumed)
    assert resumed[0]["trace_ranks"] == fit["trace_ranks"]  # the trace came back with the checkpoint
    assert resumed[0]["losses"][0] < fit["losses"][0]  # training went on from the checkpoint's weights
    assert resumed[0]["exported_scores"]["ppl/alpha"] == pytest.approx(
        resumed[0]["report"]["quality"]["recovered"]["ppl/alpha"], rel=1e-4)


# ---------------------------------------------------------------------- Lightning DeepSpeedStrategy (GPU only)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("stage", [2, 3])
def test_lightning_deepspeed_fit_with_callback_on_gpu(tmp_path, tiny_lm_dir, text_dir, stage):
    n = torch.cuda.device_count()
    result = run_script("deepspeed_lightning.py", tiny_lm_dir, text_dir / "alpha.txt", tmp_path, stage, "full", 0, "fit",
                        timeout=DEEPSPEED_TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-6000:]
    records = [json.loads((tmp_path / f"fit_rank{r}.json").read_text()) for r in range(n)]
    plan = records[0]["plan"]
    assert plan is not None and all(r["plan"] == plan and r["shapes"] == records[0]["shapes"] for r in records)
    _check_shapes_follow_plan(records[0]["shapes"], plan, prefix="model.layers")
    assert all(r["strategy_model"] == "DeepSpeedEngine" for r in records)
    assert all(r["global_step"] == 3 and r["losses_finite"] for r in records)
    assert records[0]["exported_plan"]["layers"] == plan["layers"] and records[0]["exported_shapes"] == records[0]["shapes"]
    assert records[0]["exported_scores"]["ppl/alpha"] == pytest.approx(
        records[0]["report"]["quality"]["recovered"]["ppl/alpha"], rel=1e-3)
