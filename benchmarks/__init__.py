"""voicegraph benchmarks: each measures our code and its baseline in one run."""
