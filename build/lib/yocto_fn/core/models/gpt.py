"""`gpt`: the baseline GPT-2 shape.

Learned positional embeddings, LayerNorm with bias, biased linears (`cfg.bias`, default on),
GELU MLP and explicit softmax attention, whose probabilities dropout can reach.
"""

from .transformer import Recipe, make_model

RECIPE = Recipe(
    positions="learned", norm="layer", mlp="gelu", attention="manual", bias=None,
    scaled_residual_init=False,
)  # fmt: skip
MODEL = make_model("gpt", RECIPE)
init, forward, init_cache = MODEL.init, MODEL.forward, MODEL.init_cache
