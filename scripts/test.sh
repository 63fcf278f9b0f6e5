#!/usr/bin/env bash
# Set up (once) and run the whole CPU test suite.
source "$(dirname "$0")/env.sh"
exec python -m pytest "$@"
