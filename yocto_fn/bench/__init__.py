"""The benchmark harness: the suite behind `cli.py bench`, and what every benchmark under
`python -m benchmarks` times and writes with.

    presets.py           shapes and constants; BenchConfig (light: the CLI imports it)
    contenders.py        every timed call, defined once (train, decode, ensemble, per-example)
    reference_module.py  the nn.Module GPT and torch.optim step the contenders beat
    measure.py           timing in interleaved rounds, FLOPs, matmul peaks, records
    memory.py            peak memory of one step, each contender in a fresh process
    proc.py              child processes with a time limit and their stderr on failure
    report.py            markdown tables and documents, PNG figures, JSON lines, folders
    run.py               the suite: run(BenchConfig) writes results.jsonl, table.md, chart.png

The top layer of the package: it times what the layers below offer, and nothing in the
library imports it.
"""
