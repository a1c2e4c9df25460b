"""SIGKILL a sensitivity analysis at random moments, restart until done: the file must equal an
uninterrupted run's, and nothing recorded is ever computed twice."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import SCRIPTS

JOB = os.path.join(SCRIPTS, "sens_job.py")


def records(path):
    data = json.loads(open(path).read())
    out = {("baseline", None): data["metric"]["baseline"]}
    for group, entry in data["groups"].items():
        for ratio, rec in entry["ratios"].items():
            out[(group, ratio)] = (rec["metric"], rec["loss"])
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, ):
    from conftest import run_python

    path = tmp_path_factory.mktemp("whole") / "sens.json"
    run_python([JOB, str(path)], cwd=str(path.parent))
    return records(path)


def test_kill_and_resume_equals_uninterrupted(tmp_path, uninterrupted):
    path, log = tmp_path / "sens.json", tmp_path / "evals.log"
    rng = random.Random(1234)
    kills, partial_seen = 0, False
    for attempt in range(12):
        proc = subprocess.Popen([sys.executable, JOB, str(path), "--log", str(log)], cwd=str(tmp_path),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if attempt < 6:
            # the first kill lands anywhere (even during start-up); later ones after a random
            # number of new evaluations plus a random delay: mid-evaluation or mid-write
            seen = len(open(log).read().splitlines()) if log.exists() else 0
            wait_for = seen + rng.randint(1, 5) if attempt else 10 ** 9
            deadline = time.time() + (rng.uniform(0.3, 2.5) if attempt == 0 else 120)
            while time.time() < deadline and proc.poll() is None:
                if log.exists() and len(open(log).read().splitlines()) >= wait_for:
                    time.sleep(rng.uniform(0, 0.15))
                    break
                time.sleep(0.01)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
            if path.exists():
                now = records(path)  # always valid JSON: written atomically
                partial_seen |= 1 < len(now) < len(uninterrupted)
            continue
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0 and "complete" in out
        break
    assert kills >= 3, "the job finished before it could be killed: make it longer"
    assert partial_seen, "no kill landed in the middle of the analysis"
    assert records(path) == uninterrupted
    evaluations = len(open(log).read().splitlines())
    assert evaluations <= len(uninterrupted) + kills  # at most the one in flight is lost per kill
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # a killed write's leftovers are removed


def test_two_workers_give_the_same_file(tmp_path, uninterrupted, python):
    path = tmp_path / "sens.json"
    python([JOB, str(path), "--workers", "2"], cwd=str(tmp_path))
    assert records(path) == uninterrupted


def test_ranks_share_the_work_and_merge_into_one_file(tmp_path, uninterrupted):
    """Two ranks as paddle.distributed.launch starts them (PADDLE_TRAINER_ID/NUM)."""
    path = tmp_path / "sens.json"
    procs = []
    for rank in range(2):
        env = dict(os.environ, PADDLE_TRAINER_ID=str(rank), PADDLE_TRAINERS_NUM="2")
        procs.append(subprocess.Popen([sys.executable, JOB, str(path), "--sharded"], cwd=str(tmp_path), env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    assert records(path) == uninterrupted
    parts = [json.loads((tmp_path / f"sens.rank{r}-of-2.json").read_text()) for r in range(2)]
    assert set(parts[0]["groups"]).isdisjoint(parts[1]["groups"])
    assert all(p["complete"] for p in parts)
