"""The demo and the Table 1 ablation, calling the same entry points as the command line."""
