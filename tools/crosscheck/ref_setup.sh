#!/usr/bin/env bash
# Prepare the reference side of the cross-check, outside the repository.
# Usage: source tools/crosscheck/ref_setup.sh GITDIR_OF_REFERENCE_SNAPSHOT [SCRATCH_DIR]
#   GITDIR: the git directory of a snapshot of anokland/local-loss (its train.py at HEAD);
#           a plain train.py file is accepted too.
#   SCRATCH_DIR (default ~/.cache/localjax-ref): gets train.py and venv/.
# Exports LOCALLOSS_REF (the reference's train.py, read at run time, never copied into the
# repository), REF_PY (a python with torch 2.13 CPU and numpy) and JAX_PY (this repository's
# .venv python, if there is one).
# The reference side runs in its own venv: torch 2.13.0 is pinned, and where its CPU build
# is available only for Python 3.11 (a local wheel), the venv must be a 3.11 one. The python
# that makes the venv is $REF_PYTHON, else python3.11, else python3.
_ref_src=$1; _ref_scratch=${2:-$HOME/.cache/localjax-ref}
if [ -z "$_ref_src" ]; then
  echo "usage: source tools/crosscheck/ref_setup.sh GITDIR_OR_TRAIN_PY [SCRATCH_DIR]" >&2
  return 2 2>/dev/null || exit 2
fi
mkdir -p "$_ref_scratch"
if [ -f "$_ref_src" ]; then
  cp "$_ref_src" "$_ref_scratch/train.py"
else
  git --git-dir="$_ref_src" show HEAD:train.py > "$_ref_scratch/train.py"
fi
if [ ! -x "$_ref_scratch/venv/bin/python" ]; then
  _ref_python=${REF_PYTHON:-$(command -v python3.11 || command -v python3)}
  echo "reference venv from $_ref_python ($("$_ref_python" --version 2>&1))"
  "$_ref_python" -m venv "$_ref_scratch/venv"
fi
if ! "$_ref_scratch/venv/bin/python" -c "import torch, numpy" 2>/dev/null; then
  "$_ref_scratch/venv/bin/pip" install -q torch==2.13.0 numpy
fi
export LOCALLOSS_REF="$_ref_scratch/train.py" REF_PY="$_ref_scratch/venv/bin/python"
_ref_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [ -z "$JAX_PY" ] && [ -x "$_ref_repo/.venv/bin/python" ]; then
  export JAX_PY="$_ref_repo/.venv/bin/python"
fi
"$REF_PY" -c "import sys, torch; print('REF_PY: python', sys.version.split()[0], 'torch', torch.__version__)"
echo "LOCALLOSS_REF=$LOCALLOSS_REF REF_PY=$REF_PY JAX_PY=${JAX_PY:-}"
unset _ref_src _ref_scratch _ref_python _ref_repo
