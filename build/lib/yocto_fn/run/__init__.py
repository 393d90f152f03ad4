"""One training job's host side: run state and checkpoints on the way, the train and sweep
loops, metrics, torchrun, and the tools that read finished runs (compare, analyze)."""
