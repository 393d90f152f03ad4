"""The pure core: the model's config, parameter trees, the variants, the KV cache, the
optimizers (gradient transformations), the train step and its transforms (ensembles,
per-example gradients, curvature).

Functions of tensors only: nothing here reads or writes files, parses flags, keeps global
state or changes torch's or the compiler's settings (a host applies those before it
compiles), and nothing here imports the layers above it (`formats`, `data`, `generate`,
`plan`, `run`). It imports torch, einops and numpy, and of the package only the ground's
`errors` and `device`.
"""
