"""The pipeline of one cell, framework-free: prepare, train the teacher, train
the students, evaluate.

The harness owns the loop and the clock. Every step is timed the same way
for every backend: the clock starts, the backend runs one step, the device is
synchronised, the clock stops. The first warm-up steps of each phase (which
include compilation) are reported apart from the steady state.
"""
