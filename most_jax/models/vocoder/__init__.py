"""Unit vocoder: discrete speech units -> 16 kHz waveform (unit HiFi-GAN), and its GAN training."""
