#!/bin/sh
# Stands for a real per-item job: fails for item2, succeeds for the others.
if [ "$1" = item2 ]; then
    echo "cannot process $1" >&2
    exit 3
fi
echo "processed $1"
