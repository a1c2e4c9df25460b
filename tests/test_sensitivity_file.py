"""The sensitivity file's guarantees (issue 12): an imported file is bound to the first model
that uses it, incomplete or newer files are refused with the reason, two writers keep every
record, and the file's mode follows the umask."""
import json
import os
import subprocess
import sys

import pytest

from conftest import clean_env
from slim_plugins.errors import SensitivityFileError
from slim_plugins.plugins.prune.legacy import to_sensitivity_json
from slim_plugins.plugins.prune.sensitivity import FORMAT, SensitivityFile, write_json_atomic


def identity(model="arch-a", weights="weights-a", metric="acc"):
    return dict(model_fingerprint=model, weights=weights, metric=metric, criterion="l1_norm", max_batches=None)


def test_an_imported_file_is_bound_to_the_first_model_that_uses_it(tmp_path):
    path = str(tmp_path / "imported.json")
    write_json_atomic(path, to_sensitivity_json({"conv2d_0.w_0": {0.1: 0.01, 0.2: 0.03}}, "old.sensi.data"))
    SensitivityFile.open(path, **identity())  # e.g. sen_analyze=false: nothing else is written
    data = json.loads(open(path).read())
    assert (data["model_fingerprint"], data["weights_fingerprint"]) == ("arch-a", "weights-a")
    assert data["metric"]["name"] == "acc" and data["criterion"] == "l1_norm"
    sfile = SensitivityFile.open(path, **identity())  # the same model again: accepted
    sfile.set_baseline(0.9, 0.1)
    sfile.record("conv1.weight", 0.5, 0.8, 0.1)
    sfile.save()
    assert json.loads(open(path).read())["model_fingerprint"] == "arch-a"
    with pytest.raises(SensitivityFileError, match="another model architecture"):
        SensitivityFile.open(path, **identity(model="arch-b"))
    with pytest.raises(SensitivityFileError, match="other weights"):
        SensitivityFile.open(path, **identity(weights="weights-b"))
    with pytest.raises(SensitivityFileError, match="metric is 'acc'"):
        SensitivityFile.open(path, **identity(metric="hmean"))


@pytest.mark.parametrize("content, message", [
    ({"format": FORMAT}, "is incomplete: it has no version, model_fingerprint"),
    ({"format": FORMAT, "version": 1, "model_fingerprint": None, "weights_fingerprint": None, "criterion": None,
      "metric": {"name": None}, "groups": {"g": {"ratios": {"0.5": {"metric": 1}}}}}, "group g ratio '0.5' has no"),
    ({"format": FORMAT, "version": 9, "model_fingerprint": None, "weights_fingerprint": None, "criterion": None,
      "metric": {}, "groups": {}}, "version 9; this slim-plugins reads version 1; hint: upgrade"),
    ([1, 2], "is not a slim-plugins sensitivity file"),
])
def test_incomplete_or_newer_files_are_refused_naming_the_file(tmp_path, content, message):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(content))
    with pytest.raises(SensitivityFileError) as err:
        SensitivityFile.open(str(path), **identity())
    assert str(path) in str(err.value) and message in str(err.value)


def test_unreadable_files_name_the_file_and_the_fix(tmp_path):
    import pickle

    (tmp_path / "dir.json").mkdir()
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    (tmp_path / "broken.json").write_text('{"format": ')
    with open(tmp_path / "old.pickle", "wb") as f:
        pickle.dump({"conv2d_0.w_0": {0.1: 0.01}}, f, protocol=0)
    expected = {"dir.json": "is a directory", "binary.json": "is not a text file",
                "broken.json": "is not valid JSON", "old.pickle": "slim-plugins sens import"}
    for name, message in expected.items():
        with pytest.raises(SensitivityFileError) as err:
            SensitivityFile.load(str(tmp_path / name))
        assert str(tmp_path / name) in str(err.value) and message in str(err.value) and "hint:" in str(err.value)


WRITER = """
import sys
from slim_plugins.plugins.prune.sensitivity import SensitivityFile
path, who = sys.argv[1], sys.argv[2]
sfile = SensitivityFile.open(path, model_fingerprint="m", weights="w", metric="acc", criterion="l1_norm",
                             max_batches=None)
if sfile.baseline is None:
    sfile.set_baseline(0.9, 0.1)
for i in range(60):
    sfile.record(f"{who}.g{i}", 0.5, 0.8, 0.0)
    sfile.save()
"""


def test_two_processes_writing_one_file_keep_every_record(tmp_path):
    path = tmp_path / "sens.json"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), who], cwd=str(tmp_path), env=clean_env(),
                              stderr=subprocess.PIPE, text=True) for who in ("a", "b")]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    groups = json.loads(path.read_text())["groups"]
    assert len(groups) == 120 and all(g["ratios"] for g in groups.values())
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_the_file_mode_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_json_atomic(str(tmp_path / "a.json"), {"x": 1})
        open(tmp_path / "b.txt", "w").close()
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "a.json").st_mode & 0o777 == os.stat(tmp_path / "b.txt").st_mode & 0o777 == 0o640
