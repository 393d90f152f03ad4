"""`gpt-fast`: the throughput-focused variant.

`gpt` with fused scaled-dot-product attention (Flash / memory-efficient kernels where the
device has them) and biasless linears; learned positions and LayerNorm are kept, so quality
stays close to `gpt`. Attention-probability dropout is not applied (SDPA would need the
global RNG); embedding and residual dropout are.
"""

from .transformer import Recipe, make_model

RECIPE = Recipe(
    positions="learned", norm="layer", mlp="gelu", attention="sdpa", bias=False,
    scaled_residual_init=False,
)  # fmt: skip
MODEL = make_model("gpt-fast", RECIPE)
init, forward, init_cache = MODEL.init, MODEL.forward, MODEL.init_cache
