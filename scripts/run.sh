#!/usr/bin/env bash
# Set up (once) and run the main job on the built-in defaults.
source "$(dirname "$0")/env.sh"
exec python -m nanoseek speedrun "$@"
