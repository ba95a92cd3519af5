# Two commands do all the setup on a fresh clone: `make demo` and `make test`.
# The virtual environment is (re)installed only when pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NBSTAMP := $(VENV)/.installed-notebooks

.PHONY: demo photos notebooks lab notebooks-run test lint install clean-venv gpu-check

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "hiergeo needs Python >= 3.11"'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m hiergeo.train run.overwrite=true

# Real photos, the whole path in about 30 s (2 CPUs): features of 123 shared playset photos, a
# small model, its export, predictions for the 40 others (+ the EXIF-GPS and broken photos)
# as CSV and GeoJSON, and the offline map. Needs ../shared/images (PLAYSET=... elsewhere).
SHARED  ?= ../shared/images
PLAYSET ?= $(SHARED)/osv5m_playset
PHOTOS  ?= results/photos
photos: $(STAMP)
	$(PY) scripts/playset_split.py $(PLAYSET) --out $(PHOTOS)
	$(PY) -m hiergeo.features --data $(PHOTOS)/train.csv --out $(PHOTOS)/store
	$(PY) -m hiergeo.train --config photos data.train=$(PHOTOS)/store run.out=$(PHOTOS) \
	    run.id=run run.overwrite=true
	$(PY) -m hiergeo.export --run $(PHOTOS)/run --out $(PHOTOS)/model --overwrite
	$(PY) -m hiergeo.predict --model $(PHOTOS)/model $(PHOTOS)/heldout.csv \
	    $(SHARED)/exif_gps $(SHARED)/bad_inputs --out $(PHOTOS)/predictions.csv \
	    --out $(PHOTOS)/predictions.geojson --map $(PHOTOS)/predictions.html
	@echo "open $(PHOTOS)/predictions.html in a browser (it works offline)"

# The notebooks' source is notebooks/*.py (Jupytext percent format); this writes the .ipynb
# beside each (or the .py from a newer .ipynb), keeping cell ids and outputs
notebooks: $(STAMP)
	$(VENV)/bin/jupytext --sync notebooks/*.py

# The `notebooks` extra (JupyterLab, nbconvert: some 45 packages, about 50 MB to download),
# installed into the venv once
$(NBSTAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[notebooks]'
	@touch $(NBSTAMP)

# JupyterLab on notebooks/ (installs the extra the first time). Needs a browser: open the
# http://localhost:8888/lab?token=... address it prints (on a remote machine, forward the port
# with ssh -L 8888:localhost:8888); Ctrl-C twice stops it. Without a browser: make notebooks-run
lab: $(NBSTAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

# All four notebooks executed headless in fresh kernels (scripts/run_notebooks.py), one line
# each with its time; copies with outputs in results/notebooks/ (.ipynb, and .html to read in a
# browser). Notebook 03 is skipped, with what to run, until `make demo` has written results/demo
notebooks-run: $(NBSTAMP)
	$(PY) scripts/run_notebooks.py --out results/notebooks

# Every CUDA path in about 4 minutes on one GPU (scripts/gpu_check.py): device spellings, bf16
# extraction and its throughput, training on an OSV-5M-sized store, export, predict with a
# map, torchrun on every GPU, the loss-memory table. Writes results/benchmarks/gpu.json and
# gpu.md; on a machine without a GPU it says so and exits 0
gpu-check: $(STAMP)
	$(PY) scripts/gpu_check.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
