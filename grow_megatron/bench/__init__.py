"""`grow-megatron bench`: timed grown-vs-static training throughput (issue 8). See docs/bench.md."""
