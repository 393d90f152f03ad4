"""Text out of a params tree: prefill and cached decode, sampling filters, chat, the
packaged decode step, weight quantisation and the batched server."""
