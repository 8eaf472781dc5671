#!/usr/bin/env bash
# Render every stack's Kubernetes objects under mocks and scan them with checkov, which lives in
# its own virtual environment (.venv-checkov: it pins boto3 versions that clash with the
# project's). Fails on any failed check not waived in scripts/checkov-waivers.txt.
#   usage: scripts/checkov-scan.sh [stack ...]      (default: every Pulumi.<stack>.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."
CHECKOV_VERSION=3.3.30
PYTHON=${PYTHON:-python3.11}
VENV=.venv-checkov
OUT=build/manifests

if [ ! -x "$VENV/bin/checkov" ] || ! "$VENV/bin/checkov" --version 2>/dev/null | grep -qx "$CHECKOV_VERSION"; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip --disable-pip-version-check -q install "checkov==$CHECKOV_VERSION"
fi

stacks=("$@")
if [ ${#stacks[@]} -eq 0 ]; then
  for f in Pulumi.*.yaml; do s=${f#Pulumi.}; stacks+=("${s%.yaml}"); done
fi
rm -rf "$OUT"
for stack in "${stacks[@]}"; do
  # Validation runs too; the scan needs only the written objects, so its verdict is not fatal here.
  .venv/bin/python -m infra.tools.validation --stack "$stack" --out "$OUT/$stack" >/dev/null || true
  # And with its example jobs enabled: the jobs, and the scaler controller for a scaled one.
  .venv/bin/python -m infra.tools.validation --stack "$stack" --examples --out "$OUT/$stack-examples" >/dev/null || true
done

skip=$(grep -Ev '^\s*(#|$)' scripts/checkov-waivers.txt | awk '{print $1}' | paste -sd, -)
exec "$VENV/bin/checkov" --skip-download --framework kubernetes -d "$OUT" --skip-check "$skip" --compact --quiet
