"""What goes to and from disk: checkpoints, safetensors and transformers layouts, and the
tokenizers. Built on `core` (the trees it writes); knows nothing of a training job."""
