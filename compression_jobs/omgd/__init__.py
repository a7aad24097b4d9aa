"""OMGD: Online Multi-Granularity Distillation for GAN compression (Ren et al., ICCV 2021)."""
