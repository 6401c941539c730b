"""camssl: semi-supervised image classification guided by class activation maps."""

__version__ = "0.1.0"
