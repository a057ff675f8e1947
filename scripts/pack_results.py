"""Pack what a GPU session must bring back into one compressed tar: each sweep's tables (results, arms, trace),
multirun.yaml, cost table and report, and per complete run its CSVs, run.json, resolved config (.hydra/) and
run.log; each drafter folder's config.json and tau record (no weights); the machine's environment (<tar name>.env.json).
Runs without a `done` marker (killed, or still running) are left out.

    python scripts/pack_results.py $OUT/smollm2.tar.xz outputs/experiments/smollm2_main results/models/smollm2 ...

Unpack where the results are committed: tar -xJf smollm2.tar.xz -C results/gpu/smollm2 (one folder per
packed path, named after its last part).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tarfile
import time
from pathlib import Path

from flashspec.harness import store
from flashspec.harness.runner import git_commit, versions

WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
LIMIT_MB = 15  # the device machine returns files of at most 16 MiB


def wanted(path: Path, folder: Path, run_traces: bool = True) -> bool:
    """Everything but weights, and inside a sweep only complete runs' folders (without their trace.csv unless
    `run_traces`: the sweep's trace.csv holds the same rows)."""
    if path.suffix in WEIGHTS or path.name.endswith(".tmp") or path.name == ".sweep.lock":
        return False
    inner = path.relative_to(folder).parts
    if len(inner) > 1 and (folder / "multirun.yaml").is_file() and inner[0] != "report":
        return (folder / inner[0] / store.DONE).is_file() and (run_traces or path.name != "trace.csv")
    return True


def environment() -> dict:
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        gpu = None
    return {"packed": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_commit": git_commit(), "versions": versions(),
            "platform": platform.platform(), "nvidia_smi": gpu}


def pack(out: Path, folders: list[Path], run_traces: bool = True) -> list[str]:
    """Write the tar; returns the names packed."""
    names = []
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:xz") as tar:
        for folder in folders:
            for path in sorted(p for p in folder.rglob("*") if p.is_file() and wanted(p, folder, run_traces)):
                name = f"{folder.name}/{path.relative_to(folder)}"
                tar.add(path, arcname=name)
                names.append(name)
        env = out.with_name(f"{out.name.split('.')[0]}.env.json")  # one per tar: several unpack into one folder
        env.write_text(json.dumps(environment(), indent=2))
        tar.add(env, arcname=env.name)
        env.unlink()
    return [*names, env.name]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the tar to write (.tar.xz)")
    parser.add_argument("folders", type=Path, nargs="+", help="sweep directories and drafter folders")
    args = parser.parse_args(argv)
    folders = [f for f in args.folders if f.is_dir()]
    if not folders:
        parser.error(f"none of {', '.join(map(str, args.folders))} is a folder: nothing to pack")
    for missing in sorted(set(args.folders) - set(folders)):  # a sweep that wrote nothing: pack the others
        print(f"warning: {missing} is not a folder; packing the others")
    names = pack(args.out, folders)
    if args.out.stat().st_size > LIMIT_MB * 2**20:
        print(f"{args.out} is over {LIMIT_MB} MiB: packing again without the runs' own trace.csv")
        names = pack(args.out, folders, run_traces=False)
    runs = sum(n.endswith(f"/{store.DONE}") for n in names)
    print(f"{args.out}: {len(names)} files, {runs} complete runs, {args.out.stat().st_size / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
