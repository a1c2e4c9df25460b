"""Two CPU ranks under `python -m paddle.distributed.launch`: each analyses its share of the
groups, rank 0 merges one file, every rank applies the identical plan and trains data-parallel."""
import json
import os
import subprocess
import sys

import paddle

from conftest import SCRIPTS, clean_env

SCRIPT = os.path.join(SCRIPTS, "hapi_digits.py")


def test_launch_two_ranks_shard_analysis_and_train_the_same_pruned_model(tmp_path):
    subprocess.run([sys.executable, SCRIPT, str(tmp_path / "base"), "--epochs", "2"], cwd=str(tmp_path),
                   env=clean_env(), check=True, capture_output=True, timeout=600)  # weights worth analysing
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", "logs",
           SCRIPT, str(tmp_path / "out"), "--epochs", "1", "--init", str(tmp_path / "base" / "final"),
           "--plugin", "prune",
           "--prune.eval_metric_loss", "0.05", "--prune.sen_ratios", "0.3,0.6"]
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=clean_env(), capture_output=True, text=True, timeout=600)
    logs = {r: (tmp_path / "logs" / f"workerlog.{r}").read_text() for r in range(2)}
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + logs[0][-3000:]
    results = [json.loads(logs[r].strip().splitlines()[-1]) if logs[r].strip().splitlines()[-1].startswith("{")
               else json.loads([l for l in logs[r].splitlines() if l.startswith('{"acc"')][-1]) for r in range(2)]
    assert results[0]["shapes"] == results[1]["shapes"]
    parts = [json.loads((tmp_path / "output" / f"sensitivities.rank{r}-of-2.json").read_text()) for r in range(2)]
    merged = json.loads((tmp_path / "output" / "sensitivities.json").read_text())
    assert parts[0]["groups"] and parts[1]["groups"]
    assert set(parts[0]["groups"]).isdisjoint(parts[1]["groups"])
    assert set(merged["groups"]) == set(parts[0]["groups"]) | set(parts[1]["groups"])
    saved = paddle.load(str(tmp_path / "out" / "final.pdparams"))
    assert {k: list(v.shape) for k, v in saved.items()} == results[0]["shapes"]
    assert "(rank 1 of 2 analyses its share)" in logs[1]
