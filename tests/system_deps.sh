#!/bin/sh
# Debian's packages some tests need (the Makefile's `test` runs this beside the venv's
# set-up), all in one apt-get: Chromium and ChromeDriver for the dashboard's browser test,
# tmux for the status-line test, Slurm and munge for tests/test_slurm.py. libpmix-dev:
# Slurm's mpi/pmix plugin loads libpmix.so (the unversioned name only the -dev package
# provides); without it `srun --mpi=pmix` fails and the direct-launch test skips.
# As root with apt-get: installs what is missing. Otherwise says which tests will skip.
set -e
need=""
command -v chromium >/dev/null 2>&1 || need="$need chromium"
command -v chromedriver >/dev/null 2>&1 || need="$need chromium-driver"
command -v tmux >/dev/null 2>&1 || need="$need tmux"
command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 \
  && command -v sbatch >/dev/null 2>&1 || need="$need slurm-wlm"
command -v munged >/dev/null 2>&1 || need="$need munge"
for lib in /usr/lib/*/pmix2/lib/libpmix.so; do
  [ -e "$lib" ] || need="$need libpmix-dev"
done
[ -n "$need" ] || exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
else
  echo "tests/system_deps.sh:$need missing and not root with apt-get: their tests will skip"
fi
