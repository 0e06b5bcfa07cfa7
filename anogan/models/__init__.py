"""Layer 5, models: the LightningModules (the GAN, AnoGAN's batched mapping, f-AnoGAN's encoder
stage, the aCAE baseline) and the one-pass baselines. Each is thin over the pure nets and equations of
``anogan.nets``; the modules here do not import each other."""
