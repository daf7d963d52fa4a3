"""aigc_jax: GANs, VAEs, DDPM diffusion and a decoder-only Transformer LM in JAX/Flax."""
