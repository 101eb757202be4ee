#!/usr/bin/env bash
# Install a one-node SLURM's programs (Debian packages slurmctld, slurmd, slurm-client, munge)
# for the SLURM launcher tests (tests/slurm/). Idempotent: does nothing when they are present.
# The packaged daemons are not started: a temporary /usr/sbin/policy-rc.d (exit 101) keeps apt
# from starting them, and is removed afterwards when this script created it. The tests start
# their own munged / slurmctld / slurmd with their own configuration and stop them by PID.
# Needs root (CI runs as root); without apt-get or root it says so and exits 1.
set -euo pipefail
PKGS=(slurmctld slurmd slurm-client munge)
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
   && command -v munged >/dev/null; then
  echo "install_slurm: already installed (slurm-wlm $(dpkg-query -W -f '${Version}' slurmd 2>/dev/null || echo ?))"
  exit 0
fi
if ! command -v apt-get >/dev/null || [ "$(id -u)" != 0 ]; then
  echo "install_slurm: needs root and apt-get (Debian/Ubuntu) to install ${PKGS[*]}; install them by hand" >&2
  exit 1
fi
POLICY=/usr/sbin/policy-rc.d
created=0
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$POLICY" && chmod 755 "$POLICY" && created=1
fi
cleanup() { if [ "$created" = 1 ]; then rm -f "$POLICY"; fi; }
trap cleanup EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null
echo "install_slurm: installed slurm-wlm $(dpkg-query -W -f '${Version}' slurmd), munge $(dpkg-query -W -f '${Version}' munge)"
