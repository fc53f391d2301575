"""Words: the vocabulary (vocab), the coco-caption metrics (metrics) and CIDEr-D as a reward (cider)."""
