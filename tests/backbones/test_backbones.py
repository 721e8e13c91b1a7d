"""Backbones as data: the registry, name resolution, random/local weights, the fast offline failure."""

import json

import open_clip
import pytest
import torch
from click.testing import CliRunner
from cmm_cache.cli.main import main

from cmm_cache.backbones.load import load_backbone
from cmm_cache.backbones.registry import list_backbones, register_model_configs, resolve_backbone
from cmm_cache.backbones.weights import file_sha256, resolve_weights
from cmm_cache.errors import CmmError


def test_registry_maps_paper_aliases_to_openai_quickgelu():
    reg = {b.name: b for b in list_backbones()}
    assert {"rn50", "rn101", "vit-b-32", "vit-b-16", "tiny"} <= set(reg)
    assert (reg["rn50"].model, reg["rn50"].pretrained) == ("RN50-quickgelu", "openai")
    assert (reg["rn101"].model, reg["rn101"].pretrained) == ("RN101-quickgelu", "openai")
    assert reg["vit-b-32"].pretrained == reg["vit-b-16"].pretrained == "openai"
    assert reg["tiny"].pretrained is None
    register_model_configs()
    for b in reg.values():
        assert b.model in open_clip.list_models(), b.model
        if b.pretrained:
            cfg = open_clip.get_pretrained_cfg(b.model, b.pretrained)
            assert cfg, b.name
            # the architecture's activation matches the weights' (plain RN50 would be wrong)
            assert cfg.get("quick_gelu", False) == open_clip.get_model_config(b.model).get("quick_gelu", False)


def test_resolve_names():
    s = resolve_backbone("ViT-B-32/laion2b_s34b_b79k")
    assert (s.model, s.pretrained) == ("ViT-B-32", "laion2b_s34b_b79k")
    s = resolve_backbone("RN50-quickgelu:openai")
    assert (s.model, s.pretrained) == ("RN50-quickgelu", "openai")
    assert resolve_backbone("RN50", "/some/RN50.pt").pretrained == "/some/RN50.pt"
    with pytest.raises(CmmError, match="Unknown backbone"):
        resolve_backbone("no-such-net")
    with pytest.raises(CmmError, match="no weights"):
        resolve_backbone("ViT-L-14")
    assert resolve_backbone("RN50").alias == "rn50"  # aliases are case-insensitive
    with pytest.raises(CmmError, match="no pretrained tag"):
        resolve_backbone("ViT-B-32/not-a-tag")


def test_tiny_is_small_and_deterministic():
    a = load_backbone("tiny")
    b = load_backbone("tiny")
    assert a.embed_dim == 32 and a.image_size == (32, 32)
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    x = torch.randn(2, 3, 32, 32)
    assert a.model.encode_image(x).shape == (2, 32)
    assert a.weights_sha256 is None and a.provenance()["random_weights_seed"] == 0


def test_local_weights_file(tmp_path):
    src = load_backbone("tiny")
    sd = {k: v + 0.01 for k, v in src.model.state_dict().items()}
    f = tmp_path / "tiny-weights.pt"
    torch.save(sd, f)
    bb = load_backbone("tiny", pretrained=f)
    assert bb.weights_path == str(f) and bb.weights_sha256 == file_sha256(f)
    assert torch.allclose(bb.model.state_dict()["visual.conv1.weight"], sd["visual.conv1.weight"])
    with pytest.raises(CmmError, match="does not exist"):
        load_backbone("tiny", pretrained=tmp_path / "missing.pt")


@pytest.mark.parametrize("offline", [True, False])
def test_unavailable_weights_fail_fast_with_one_clear_message(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/clip either
    # Fast means: no download is ever attempted, and with HF_HUB_OFFLINE not even a reachability probe.
    probes = []
    monkeypatch.setattr("open_clip.pretrained.download_pretrained", lambda *a, **k: pytest.fail("tried to download"))
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr("cmm_cache.backbones.weights._reachable", lambda *a, **k: probes.append(a) or False)
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        # a machine without network: the one bounded probe (a 3 s connect timeout) says so
        monkeypatch.setattr("cmm_cache.backbones.weights._reachable", lambda *a, **k: probes.append(a) or False)
    with pytest.raises(CmmError) as e:
        load_backbone("rn50")
    assert (probes == []) if offline else (len(probes) >= 1)
    msg = str(e.value)
    assert "could not be had offline" in msg and "rn50" in msg
    assert "--pretrained PATH" in msg and "HF_HUB_OFFLINE=1" in msg and "Hugging Face cache" in msg


def test_prefilled_hf_cache_is_used_without_network(tmp_path, monkeypatch):
    """A weights file already in the HF cache is found by the resolver (no download, no network)."""
    rev = "0" * 40
    repo = tmp_path / "hf" / "models--timm--resnet50_clip.openai"
    (repo / "snapshots" / rev).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    weights = repo / "snapshots" / rev / "open_clip_model.safetensors"
    weights.write_bytes(b"placeholder")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(
        "cmm_cache.backbones.weights._reachable",
        lambda *a, **k: pytest.fail("no network probe when the file is cached"),
    )
    path, pre = resolve_weights(resolve_backbone("rn50"))
    assert path == str(weights)
    assert pre["interpolation"] == "bicubic" and len(pre["mean"]) == 3


def test_cli_backbones_json():
    r = CliRunner().invoke(main, ["backbones", "--json"])
    assert r.exit_code == 0, r.output
    rows = {b["name"]: b for b in json.loads(r.stdout)["backbones"]}
    assert rows["rn50"]["open_clip_model"] == "RN50-quickgelu"


def test_cli_extract_fails_clearly_without_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setenv("HOME", str(tmp_path))
    r = CliRunner().invoke(main, ["extract", "--dataset", "tiny", "--backbone", "rn50", "--shots", "1", "--seeds", "1"])
    assert r.exit_code == 2, r.output
    out = " ".join(r.output.split())
    assert "could not be had offline" in out and "--pretrained" in out


def test_offline_hint_names_each_aliases_hf_repo_and_the_installed_hf_command(tmp_path, monkeypatch):
    """The hint says what to run where there is network: the installed Hugging Face CLI, the repo open_clip
    resolves for the alias, the file it looks for first."""
    from importlib.metadata import distribution

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    scripts = {e.name: e for e in distribution("huggingface_hub").entry_points if e.group == "console_scripts"}
    from cmm_cache.backbones.weights import hf_cli

    cli = hf_cli()
    assert cli in scripts and callable(scripts[cli].load())  # a command the installed huggingface_hub provides
    assert cli == "hf"  # huggingface_hub >= 0.34 (installed here) names its CLI `hf`; `huggingface-cli` is gone
    register_model_configs()
    aliases = [b for b in list_backbones() if b.pretrained]
    assert {b.name for b in aliases} >= {"rn50", "rn101", "vit-b-32", "vit-b-16"}
    for b in aliases:
        repo = open_clip.get_pretrained_cfg(b.model, b.pretrained)["hf_hub"].rstrip("/")
        with pytest.raises(CmmError) as e:
            load_backbone(b.name)
        msg = " ".join(str(e.value).split())
        assert f"`hf download {repo} open_clip_model.safetensors`" in msg, msg
        assert "HF_HUB_OFFLINE=1" in msg and "--pretrained PATH" in msg


def test_extract_help_lists_every_registered_backbone():
    r = CliRunner().invoke(main, ["extract", "--help"], terminal_width=400)
    assert r.exit_code == 0
    for b in list_backbones():
        assert f"{b.name} |" in r.output, b.name
    assert "rn50-arch" in r.output and "tiny" in r.output
