"""`gpt-plus`: the accuracy-focused variant.

Rotary position embeddings on Q/K (no position table), RMSNorm, biasless linears, a SwiGLU
MLP, fused SDPA attention, and residual output projections initialised with std
0.02/sqrt(2*n_layer) so that the residual stream's variance does not grow with depth.
"""

from .transformer import Recipe, make_model

RECIPE = Recipe(
    positions="rope", norm="rms", mlp="swiglu", attention="sdpa", bias=False,
    scaled_residual_init=True,
)  # fmt: skip
MODEL = make_model("gpt-plus", RECIPE)
init, forward, init_cache = MODEL.init, MODEL.forward, MODEL.init_cache
