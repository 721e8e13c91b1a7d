"""Weights files are never unpickled: tensors only, or one of OpenAI's published TorchScript archives.

Each hostile file holds a pickle whose ``__reduce__`` creates a marker file when it is unpickled; the marker
never appears, and the message names the format to convert to.
"""

import zipfile

import open_clip
import pytest
import torch

from cmm_cache.backbones import load as load_mod
from cmm_cache.backbones import weights as W
from cmm_cache.backbones.load import load_backbone
from cmm_cache.errors import CmmError


class Payload:
    """Unpickling this calls open(marker, "w"): the marker file appears if the pickle is ever run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_weights(path, marker):
    """A tiny backbone's real state dict with one extra entry that runs code when unpickled."""
    sd = load_backbone("tiny").model.state_dict()
    sd["zz_payload"] = Payload(marker)
    torch.save(sd, path)
    return path


def test_the_payload_does_run_when_unpickled(tmp_path):
    """The control: loading such a file the unsafe way creates the marker."""
    marker = tmp_path / "MARKER"
    f = evil_weights(tmp_path / "evil.pt", marker)
    torch.load(f, weights_only=False)
    assert marker.exists()


def test_a_pickle_that_needs_more_than_tensors_is_refused(tmp_path):
    marker = tmp_path / "MARKER"
    f = evil_weights(tmp_path / "evil.pt", marker)
    with pytest.raises(CmmError) as e:
        load_backbone("tiny", pretrained=f)
    assert "without running code" in e.value.message
    assert "state_dict" in e.value.hint and "safetensors" in e.value.hint
    assert not marker.exists()


def test_a_zip_with_a_member_ending_in_constants_pkl_is_not_taken_for_torchscript(tmp_path):
    """The old test (any member *ending with* constants.pkl) let `x_constants.pkl` through to an unsafe load."""
    marker = tmp_path / "MARKER"
    f = evil_weights(tmp_path / "evil.pt", marker)
    with zipfile.ZipFile(f, "a") as z:
        z.writestr("evil/x_constants.pkl", b"")
    assert not W._is_torchscript(str(f))
    with pytest.raises(CmmError, match="without running code"):
        load_backbone("tiny", pretrained=f)
    assert not marker.exists()


def _torchscript(path):
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    return path


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_torchscript_archive_not_published_by_openai_is_refused(tmp_path, monkeypatch):
    f = _torchscript(tmp_path / "model.pt")
    assert W._is_torchscript(str(f))
    calls = []
    real = open_clip.create_model_and_transforms
    monkeypatch.setattr(open_clip, "create_model_and_transforms", lambda *a, **k: calls.append(k) or real(*a, **k))
    with pytest.raises(CmmError) as e:
        load_backbone("tiny", pretrained=f)
    assert "TorchScript" in e.value.message and "published" in e.value.message
    assert "safetensors" in e.value.hint
    assert calls == []  # refused before open_clip was asked to load anything


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_torchscript_archive_with_a_published_sha256_is_loaded_as_torchscript(tmp_path, monkeypatch):
    """OpenAI's original archives need TorchScript: allowed for their published checksums only."""
    f = _torchscript(tmp_path / "RN50.pt")
    sha = W.file_sha256(f)
    with pytest.raises(CmmError):  # not published: refused
        W.weights_load_mode(f, sha)
    monkeypatch.setattr(W, "published_checksums", lambda: frozenset({sha}))
    monkeypatch.setattr(load_mod, "weights_load_mode", W.weights_load_mode)
    assert W.weights_load_mode(f, sha) == "torchscript"
    seen = {}

    def spy(*a, **k):
        seen.update(k)
        raise RuntimeError("stop here")  # the archive is no CLIP model; what matters is how it was to be loaded

    monkeypatch.setattr(open_clip, "create_model_and_transforms", spy)
    with pytest.raises(CmmError, match="stop here"):
        load_backbone("tiny", pretrained=f)
    assert seen["weights_only"] is False


def test_published_checksums_come_from_open_clips_table():
    sums = W.published_checksums()
    rn50 = open_clip.get_pretrained_cfg("RN50", "openai")["url"].split("/")[-2]
    assert rn50 in sums and all(len(s) == 64 for s in sums)


def test_plain_state_dicts_load_with_weights_only(tmp_path, monkeypatch):
    sd = load_backbone("tiny").model.state_dict()
    torch.save(sd, tmp_path / "ok.pt")
    seen = {}
    real = open_clip.create_model_and_transforms

    def spy(*a, **k):
        seen.update(k)
        return real(*a, **k)

    monkeypatch.setattr(open_clip, "create_model_and_transforms", spy)
    bb = load_backbone("tiny", pretrained=tmp_path / "ok.pt")
    assert seen["weights_only"] is True and bb.weights_sha256 == W.file_sha256(tmp_path / "ok.pt")


def test_expected_sha256_is_checked_before_loading(tmp_path):
    marker = tmp_path / "MARKER"
    f = evil_weights(tmp_path / "evil.pt", marker)
    with pytest.raises(CmmError, match="is not the one expected") as e:
        load_backbone("tiny", pretrained=f, expect_sha256="0" * 64)
    assert "was not loaded" in e.value.message and not marker.exists()
