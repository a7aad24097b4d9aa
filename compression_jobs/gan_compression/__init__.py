"""GAN Compression (Li et al., 2020): distillation, once-for-all supernet, search, fine-tune."""
