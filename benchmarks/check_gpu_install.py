"""Resolver check of the GPU stack: does `constraints/gpu.txt` + the package's `gpu` extra resolve, with no
CUDA and nothing installed? (Network: PyPI metadata only; several minutes. Not part of `make test`.)

Runs `pip install --dry-run --ignore-installed --report` for the project with its `gpu` extra under the
constraints, in the order `make install-gpu` installs (torch at vllm's pin first). DeepSpeed is an sdist
whose metadata step imports torch, so the dry run goes without build isolation, as the real install does.
Prints the resolved versions of the packages that must agree, checks them against the pins, and writes
the report to benchmarks/results/.

    python benchmarks/check_gpu_install.py
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints" / "gpu.txt"
WATCH = ("torch", "torchvision", "torchaudio", "vllm", "transformers", "deepspeed", "ray", "flashinfer-python",
         "flash-attn", "flash_attn")


def pins(path: Path) -> dict[str, str]:
    """name -> exact version for every `name==version` line of a constraints file."""
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s#;]+)", line.strip())
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def main() -> int:
    report = Path(tempfile.mkdtemp(prefix="gpu-resolve-")) / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-build-isolation",
           "--quiet", "--report", str(report), "-c", str(CONSTRAINTS), f"{ROOT}[gpu]"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        print(proc.stderr[-4000:])
        print(f"GPU constraints do NOT resolve (pip exit {proc.returncode})")
        return 1
    installed = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    resolved = {k: installed[k] for k in WATCH if k in installed}
    expected = pins(CONSTRAINTS)
    mismatched = {k: (v, resolved.get(k)) for k, v in expected.items() if resolved.get(k) != v}
    sdists = [i["metadata"]["name"] for i in json.loads(report.read_text())["install"]
              if not i["download_info"]["url"].endswith(".whl") and "dir_info" not in i["download_info"]]
    print(f"resolved {len(installed)} packages in {seconds:.0f} s: "
          + ", ".join(f"{k} {v}" for k, v in sorted(resolved.items())))
    print(f"source distributions (built at install): {', '.join(sorted(sdists)) or 'none'}")
    ok = not mismatched and "flash-attn" not in installed
    print("pins honoured" if not mismatched else f"pins NOT honoured: {mismatched}")
    out = {"date": dt.date.today().isoformat(), "resolves": True, "pins_honoured": not mismatched,
           "resolved": resolved, "packages": len(installed), "sdists": sdists, "seconds": round(seconds, 1),
           "python": sys.version.split()[0]}
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"gpu-install-resolve-{out['date']}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
