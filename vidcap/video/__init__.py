"""Video files -> uint8 RGB frames: the reader and the paper's sampling (reader), one module per decoder backend (decord_backend, pyav_backend)."""
