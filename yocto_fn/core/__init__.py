"""The pure core: parameter trees, the three variants, the KV cache, optimizers, the train
step and its transforms (ensembles, per-example gradients, curvature).

Functions of tensors only: nothing here reads or writes files, parses flags or keeps global
state, and nothing here imports the layers above it (`formats`, `data`, `generate`,
`plan`, `run`).
"""
