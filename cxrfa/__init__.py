"""cxrfa: an ablation lab for chest X-ray disease detection with CLIP-style image-text feature alignment."""

__version__ = "0.1.0"
