"""What the harness costs: its steady-state throughput against a bare loop.

``python -m kdbench.tools.overhead [--backends ...] [--repeats N] [--steps N]``

measure.py builds both sides and times them; __main__.py runs each backend
in a child process and prints the table.

For each backend, in a child process of its own (one framework per process),
on the speed spec (mnist5k, the distillation phase: cnn-small teacher,
mlp-64 student, batch 64), this times

- the harness: the real ``kdbench.harness.train_phase`` on a Cell, through
  the Backend adapter, exactly as a benchmark cell runs it;
- the bare loop: ``backends/<fw>/bare.py`` (``Backend.bare_loop``), the same steps written directly in
  the framework (same models, loss, optimizer, indices and learning rates),
  with no clock, no per-step sync and no adapter;

side by side. Each of ``--repeats`` rounds builds fresh state for both sides
(a fresh student and optimizer from the same initial weights), runs the
spec's warm-up steps untimed through each path (they compile: a new
tf.function or jax.jit per fresh state), then times ``--steps`` steps a side
(rounded to whole epochs of the plan), alternating harness and bare loop one
epoch at a time, the order swapped every epoch. Each block is one wall-clock
interval that ends after the device is synchronised (train_phase syncs every
step and converts its losses at the epoch end; the bare loop returns numpy).
A pair (both sides over the same epoch from the same state, back to back)
sees the same machine load, so the figure is the median over pairs of
harness / bare throughput, its quartiles beside it; the overhead is
1 - ratio and the target is at most 2%. Process CPU time is reported the same
way, to tell extra work (CPU) from waiting or lost overlap (wall only).

The teacher keeps its initial (untrained) weights: the cost of a step does not
depend on the weights' values, and training it would only lengthen the run.
Both sides start from the same weights and see the same batches, so their
losses must agree; every round checks that they do.
"""
