"""kdbench's command-line tools beside the CLI: the harness-overhead benchmark, the GPU check."""
