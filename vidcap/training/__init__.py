"""Lightning: the LightningModule (module), the DataModule (data), callbacks, self-critical training (scst), hard attention and caption sampling for the policy gradients."""
