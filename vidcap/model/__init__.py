"""The captioner as a plain nn.Module (captioner, layers), decoding (one search loop) and checkpoints."""
