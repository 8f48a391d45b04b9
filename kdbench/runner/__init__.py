"""Running cells: the matrix, the run folder and its job list, one process per cell."""
