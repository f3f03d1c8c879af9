# Two commands: `make run` (the course on the synthetic dataset, cpu profile)
# and `make test` (unit tests + every notebook under nbval, ci profile);
# `make lab` opens the notebooks in JupyterLab.
# Both create .venv and install the pinned requirements first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# musicnn's published models: the wheel's files only (--no-deps: its own requirements, TensorFlow 1 and
# NumPy < 1.17, would break the environment; nothing of it is imported).
MUSICNN := musicnn==0.1.0
STAMP := $(VENV)/.installed-$(shell cat requirements.txt | cksum | cut -d' ' -f1)-$(MUSICNN)
PROFILE ?= cpu

.PHONY: run test lab install data clean

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps $(MUSICNN)
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (course)" > /dev/null
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

data: install
	$(PY) -m helpers prepare synthetic

run: data
	$(PY) -m helpers run --profile $(PROFILE) --out output

test: data
	rm -rf output/ci
	COURSE_PROFILE=ci COURSE_RESULTS=$(CURDIR)/output/ci/results.jsonl COURSE_CHECKPOINTS=$(CURDIR)/output/ci/checkpoints \
		$(PY) -m pytest -p no:cacheprovider --durations=25 tests $(wildcard notebooks/*.ipynb) --nbval --nbval-current-env \
		--nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 600

lab: install
	$(VENV)/bin/jupyter lab notebooks

clean:
	rm -rf $(VENV) output
