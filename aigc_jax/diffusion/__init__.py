"""Diffusion as a package: schedules, the model's parameterization, the forward process, the variational
bound, guidance and samplers. It knows nothing of training, devices or data: a method (pixel-space
DDPM today, latent diffusion next) hands the samplers a denoiser function and a shape."""
