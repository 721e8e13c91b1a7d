"""A run folder never names a file to load: predict and export get the weights from the user, checked by
sha256 against the run's record before loading, and never unpickle them.

The hostile run folder's provenance.json points at its own `evil.pt` (absolute, or relative to the current
folder) with that file's sha256; unpickling `evil.pt` would create a marker file. It never appears.
"""

import json
import shutil

import numpy as np
import pytest
import torch
from support.tiny_run import cli, tiny_run

from cmm_cache.backbones.load import load_backbone
from cmm_cache.backbones.weights import file_sha256
from cmm_cache.errors import CmmError
from cmm_cache.serving.export import export_run
from cmm_cache.serving.predict import load_classifier


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _hostile_run(t, tmp_path, relative: bool):
    """A copy of the tiny run whose provenance says its features came from the local file evil.pt beside it."""
    run = tmp_path / "shared-run"
    shutil.copytree(t.run, run)
    marker = tmp_path / "MARKER"
    sd = load_backbone("tiny").model.state_dict()
    sd["zz_payload"] = Payload(marker)
    evil = run / "evil.pt"
    torch.save(sd, evil)
    prov = json.loads((run / "provenance.json").read_text())
    name = "evil.pt" if relative else str(evil)
    prov.update(pretrained=name, weights_path=name, weights_sha256=file_sha256(evil), random_weights_seed=None)
    (run / "provenance.json").write_text(json.dumps(prov))
    return run, evil, marker


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_a_run_folder_pointing_at_a_pickle_never_runs_it(tmp_path_factory, tmp_path, monkeypatch, relative):
    t = tiny_run(tmp_path_factory)
    run, evil, marker = _hostile_run(t, tmp_path, relative)
    monkeypatch.chdir(run)  # a relative path would resolve to the folder's own evil.pt
    r = cli(["predict", "--run", run, t.test_paths[0]], ok=False)
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "never names the file to load" in text and "--pretrained" in text
    assert "Traceback" not in r.output
    r = cli(["export", "--run", run, "--out", tmp_path / "m.pt2"], ok=False)
    assert r.exit_code == 2 and "never names the file to load" in " ".join(r.output.split())
    with pytest.raises(CmmError, match="never names the file to load"):
        load_classifier(run, "cpu").predict([t.test_paths[0]])
    # Even named by the user, the file is not unpickled: it needs more than tensors.
    r = cli(["predict", "--run", run, t.test_paths[0], "--pretrained", evil], ok=False)
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "without running code" in text and "safetensors" in text
    with pytest.raises(CmmError, match="without running code"):
        export_run(run, tmp_path / "m.pt2", pretrained=evil)
    assert not marker.exists()
    assert not (tmp_path / "m.pt2").exists()


def test_a_weights_file_with_another_sha256_is_refused_before_loading(tmp_path_factory, tmp_path):
    t = tiny_run(tmp_path_factory)
    run, evil, marker = _hostile_run(t, tmp_path, relative=False)
    other = tmp_path / "other.pt"
    sd = load_backbone("tiny").model.state_dict()
    sd["zz_payload"] = Payload(marker)
    sd["zz_other"] = torch.zeros(1)
    torch.save(sd, other)
    r = cli(["predict", "--run", run, t.test_paths[0], "--pretrained", other], ok=False)
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "is not the one expected" in text and "was not loaded" in text
    assert not marker.exists()


def test_pretrained_does_not_apply_to_a_run_of_random_weights(tmp_path_factory, tmp_path):
    t = tiny_run(tmp_path_factory)
    (tmp_path / "w.pt").write_bytes(b"anything")
    r = cli(["predict", "--run", t.run, t.test_paths[0], "--pretrained", tmp_path / "w.pt"], ok=False)
    assert r.exit_code == 2 and "does not apply" in " ".join(r.output.split())


def test_local_weights_are_found_in_the_users_own_record_and_checked(tmp_path):
    """Extract from a local weights file, fit, predict without --pretrained: the weights come from this user's
    private record of the files they loaded (by the sha256 the run records). A file changed since is refused
    before it is loaded."""
    w = tmp_path / "tiny-weights.pt"
    sd = {k: v + 0.01 for k, v in load_backbone("tiny").model.state_dict().items()}
    torch.save(sd, w)
    cd = tmp_path / "cache"
    cli(["extract", "--dataset", "tiny", "--backbone", "tiny", "--pretrained", w, "--cache-dir", cd])
    r = cli(["fit", "--cache-dir", cd, "--dataset", "tiny", "--backbone", "tiny", "--method", "zero-shot",
             "--shots", "1", "--seed", "1", "--json"])  # fmt: skip
    run = json.loads(r.stdout)["run"]
    from cmm_cache.datasets.registry import load_dataset

    img = load_dataset("tiny", cache_root=cd).splits["test"].paths[0]
    out = json.loads(cli(["predict", "--run", run, img, "--json"]).stdout)
    assert out["num_images"] == 1
    sd["visual.conv1.weight"] = sd["visual.conv1.weight"] * 2  # the file at the recorded path changes
    torch.save(sd, w)
    r = cli(["predict", "--run", run, img], ok=False)
    assert r.exit_code == 2 and "is not the one expected" in " ".join(r.output.split())
    assert torch.isfinite(load_classifier(run, "cpu").predict_features(np.ones((1, 32)))).all()  # no weights needed


def test_a_list_that_is_not_utf8_is_one_message(tmp_path_factory, tmp_path):
    t = tiny_run(tmp_path_factory)
    lst = tmp_path / "list.csv"
    lst.write_bytes("path\nphoto-\xe9t\xe9.png\n".encode("latin-1"))
    r = cli(["predict", "--run", t.run, lst], ok=False)
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "is not UTF-8 text" in text and "Traceback" not in r.output
