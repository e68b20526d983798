# Sourced by scripts/demo.sh and scripts/test.sh from the repository root: create ./.venv when it is missing
# (with $PYTHON, default python3) and install MedHeaven into it, editable, with the extras asked for.
# Usage: install_medheaven .        (the package)
#        install_medheaven ".[dev]" (the package and the test tools)
install_medheaven() {
  local python="${PYTHON:-python3}"
  if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
  fi
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e "$1"
}
