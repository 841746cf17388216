"""First-stage training objectives (paper Sec. 3.1): KL- and VQ-regularised autoencoders."""
from ldm.modules.losses.contperceptual import DummyLoss, LPIPSWithDiscriminator
from ldm.modules.losses.vqperceptual import VQLPIPSWithDiscriminator

__all__ = ["DummyLoss", "LPIPSWithDiscriminator", "VQLPIPSWithDiscriminator"]
