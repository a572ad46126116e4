#!/bin/sh
# The AST train-step grid on a GPU/TPU host under a time limit (GRID_TIMEOUT s, default 570; the grid starts no point after --grid-budget-s, default 480), then its markdown table. Extra arguments go to the grid, e.g. --grid-batches 32,64. Results: ${GRID_OUT:-grid.jsonl}; progress on stderr.
cd "$(dirname "$0")/.." && timeout -k 20 "${GRID_TIMEOUT:-570}" python benchmarks/ast_step.py --grid --out "${GRID_OUT:-grid.jsonl}" "$@" > "${GRID_OUT:-grid.jsonl}.log"; python benchmarks/ast_step.py --table "${GRID_OUT:-grid.jsonl}"
