"""The import path the original ``text2img256`` config names (``ldm.data.previews.pytorch_dataset``)."""
