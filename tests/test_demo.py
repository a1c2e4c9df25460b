"""`slim-plugins demo`: the main job on the embedded default."""
import json

from slim_plugins.plugins.prune.sensitivity import SensitivityFile


def test_demo_quick_prunes_a_quarter_of_flops_within_one_point(tmp_path, python):
    report = tmp_path / "r.json"
    proc = python(["-m", "slim_plugins", "demo", "--quick", "--report", str(report),
                   "--workdir", str(tmp_path / "work")], cwd=str(tmp_path))
    result = json.loads(report.read_text())
    for side in ("before", "after"):
        assert set(result[side]) == {"params", "flops", "latency", "metric"}
    # the budget holds for the whole pruned model (measured before fine-tuning), not per group
    assert result["whole_model_loss"] is not None and result["whole_model_loss"] <= result["eval_metric_loss"]
    assert result["flops_reduction"] >= 0.25
    assert result["accuracy_change_points"] >= -1.0  # at most one point lost after fine-tuning
    assert result["after"]["params"] < result["before"]["params"]
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ETA" in proc.stderr and "FLOPs" in proc.stdout
    assert "When training, we now always track" not in proc.stderr  # Paddle's BatchNorm warning
    sens = SensitivityFile.load(result["sensitivity_file"])
    assert sens.data["metric"]["name"] == "acc" and sens.baseline == result["before"]["metric"]
    # the checkpoint carries its plan
    assert (tmp_path / "work" / "final.prune.json").exists()
