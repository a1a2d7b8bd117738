"""Phases 2-4, the generator: the VQ autoencoder and the latent diffusion model (``models``, ``training``,
``train_ae``, ``train_ldm``), kept-region masks, the sampling loops (``sampling``) and inpainting (``inpaint``)."""
