"""Every object a config may build without ``--trust-config-targets``, by its full dotted name.

Why a list and not a prefix or a decorator: a prefix trusts too much (``torch.load`` unpickles a
file, ``torch.hub.load`` runs a ``hubconf.py``, ``ldm.config.targets.set_trust_all_targets`` would
switch the check off, ``ldm.checkpoint.*`` functions read files), and a decorator spreads the
decision over the code base, so that what is trusted is only known after importing everything. One
list in one file is read in a minute, shows up in review whenever it grows, and is checked without
importing the module a target names.

What is here is what the shipped configs (configs/, models/*/config.yaml, the CompVis originals,
docs and README) and the code name: models, networks, conditioning encoders, losses, learning-rate
schedules, datasets, the data module, our callbacks and a few Lightning callbacks. Names are listed
as configs spell them; the legacy spellings (``main.*``, ``taming.*``) are mapped first
(:data:`ldm.config.targets.LEGACY_TARGETS`) and must map onto a name listed here. Every entry is a
class whose constructor only builds an object, except the few factories marked below.

To use your own class in a config, either add its name here or pass ``--trust-config-targets``
(in Python: :func:`ldm.config.extra_targets` or :func:`ldm.config.set_trust_all_targets`).
"""
from __future__ import annotations

_MODELS = (
    "ldm.models.autoencoder.AutoencoderKL",
    "ldm.models.autoencoder.VQModel",
    "ldm.models.autoencoder.VQModelInterface",
    "ldm.models.autoencoder.IdentityFirstStage",
    "ldm.models.diffusion.ddpm.DDPM",
    "ldm.models.diffusion.ddpm.LatentDiffusion",
)

_NETWORKS = (
    "ldm.modules.diffusionmodules.openaimodel.UNetModel",
    "ldm.modules.diffusionmodules.model.Encoder",
    "ldm.modules.diffusionmodules.model.Decoder",
    "ldm.modules.vqvae.quantize.VectorQuantizer",
    "ldm.modules.vqvae.quantize.VectorQuantizer2",
    "ldm.modules.discriminator.model.NLayerDiscriminator",
    "torch.nn.Identity",  # cond_stage_config of unconditional models in the original configs
)

_ENCODERS = (
    "ldm.modules.encoders.modules.ClassEmbedder",
    "ldm.modules.encoders.modules.TransformerEmbedder",
    "ldm.modules.encoders.modules.BERTTokenizer",
    "ldm.modules.encoders.modules.WordLevelTokenizer",
    "ldm.modules.encoders.modules.BERTEmbedder",
    "ldm.modules.encoders.modules.SpatialRescaler",
    "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
    # Factory, not a class: WordLevelTokenizer's `word_vocab` names it; it returns a list of words.
    "ldm.data.synthetic.caption_vocabulary",
    # The frozen teacher of the REPA term (representation_alignment.teacher_config); reads safetensors/JSON only.
    "ldm.models.diffusion.alignment.ClassifierTeacher",
)

_LOSSES = (
    "ldm.modules.losses.DummyLoss",
    "ldm.modules.losses.LPIPSWithDiscriminator",
    "ldm.modules.losses.VQLPIPSWithDiscriminator",
    "ldm.modules.losses.contperceptual.DummyLoss",
    "ldm.modules.losses.contperceptual.LPIPSWithDiscriminator",
    "ldm.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
    "ldm.modules.losses.lpips.LPIPS",
)

_SCHEDULES = (
    "ldm.lr_scheduler.LambdaWarmUpCosineScheduler",
    "ldm.lr_scheduler.LambdaWarmUpCosineScheduler2",
    "ldm.lr_scheduler.LambdaLinearScheduler",
)

_DATA = (
    "ldm.data.base.DataModuleFromConfig",
    "ldm.data.base.WrappedDataset",
    "ldm.data.coco.CocoCaptions",
    "ldm.data.coco.CocoCaptionsTrain",
    "ldm.data.coco.CocoCaptionsValidation",
    "ldm.data.coco.CocoBBox",
    "ldm.data.coco.CocoBBoxTrain",
    "ldm.data.coco.CocoBBoxValidation",
    "ldm.data.faceshq.CelebAHQTrain",
    "ldm.data.faceshq.CelebAHQValidation",
    "ldm.data.faceshq.FFHQTrain",
    "ldm.data.faceshq.FFHQValidation",
    "ldm.data.folder.ImageFolder",
    "ldm.data.folder.ImageFolderTrain",
    "ldm.data.folder.ImageFolderValidation",
    "ldm.data.imagenet.ImageNetTrain",
    "ldm.data.imagenet.ImageNetValidation",
    "ldm.data.imagenet.ImageNetSR",
    "ldm.data.imagenet.ImageNetSRTrain",
    "ldm.data.imagenet.ImageNetSRValidation",
    "ldm.data.laion.WebDatasetCaptions",
    "ldm.data.laion.LAIONTrain",
    "ldm.data.laion.LAIONValidation",
    "ldm.data.latent_cache.CachedLatents",
    "ldm.data.laion.ConceptualCaptions",
    "ldm.data.laion.ConceptualCaptionsTrain",
    "ldm.data.laion.ConceptualCaptionsValidation",
    "ldm.data.landscapes.RFWTrain",
    "ldm.data.landscapes.RFWValidation",
    "ldm.data.landscapes.SFLCKRTrain",
    "ldm.data.landscapes.SFLCKRValidation",
    "ldm.data.lsun.LSUNChurchesTrain",
    "ldm.data.lsun.LSUNChurchesValidation",
    "ldm.data.lsun.LSUNBedroomsTrain",
    "ldm.data.lsun.LSUNBedroomsValidation",
    "ldm.data.openimages.FullOpenImagesTrain",
    "ldm.data.openimages.FullOpenImagesValidation",
    "ldm.data.openimages.OpenImagesBBox",
    "ldm.data.openimages.OpenImagesBBoxTrain",
    "ldm.data.openimages.OpenImagesBBoxValidation",
    "ldm.data.openimages.SuperresOpenImages",
    "ldm.data.openimages.SuperresOpenImagesAdvancedTrain",
    "ldm.data.openimages.SuperresOpenImagesAdvancedValidation",
    "ldm.data.places.PlacesInpainting",
    "ldm.data.places.PlacesInpaintingTrain",
    "ldm.data.places.PlacesInpaintingValidation",
    "ldm.data.previews.pytorch_dataset.PreviewsTrain",
    "ldm.data.previews.pytorch_dataset.PreviewsValidation",
    "ldm.data.synthetic.SyntheticShapes",
    "ldm.data.synthetic.SyntheticShapesTrain",
    "ldm.data.synthetic.SyntheticShapesValidation",
)

# Lightning callbacks whose parameters are plain values. Left out on purpose: LambdaCallback,
# ModelPruning and the finetuning/prediction-writer bases take functions or need subclassing.
_LIGHTNING_CALLBACKS = tuple(f"pytorch_lightning.callbacks.{name}" for name in (
    "DeviceStatsMonitor",
    "EarlyStopping",
    "GradientAccumulationScheduler",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "ModelSummary",
    "OnExceptionCheckpoint",
    "RichModelSummary",
    "RichProgressBar",
    "StochasticWeightAveraging",
    "TQDMProgressBar",
    "Timer",
))

_CALLBACKS = (
    "ldm.trainer.callbacks.SetupCallback",
    "ldm.trainer.callbacks.ImageLogger",
    "ldm.trainer.callbacks.DeviceStatsCallback",
    "ldm.trainer.callbacks.FinalCheckpoint",
    "ldm.trainer.resume.RNGState",
    "ldm.trainer.preemption.PreemptionCheckpoint",
    "ldm.trainer.nonfinite.NonFiniteGuard",
) + _LIGHTNING_CALLBACKS

# Entries that are functions rather than classes, each with the reason above.
FACTORIES: frozenset[str] = frozenset({"ldm.data.synthetic.caption_vocabulary"})

ALLOWED_TARGETS: frozenset[str] = frozenset(
    _MODELS + _NETWORKS + _ENCODERS + _LOSSES + _SCHEDULES + _DATA + _CALLBACKS)
