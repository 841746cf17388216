"""Interoperability with the diffusers ecosystem: export a model trained here as a diffusers
folder (pipelines where diffusers has one, loadable components otherwise) and import
diffusers-format weights into our checkpoint format. Needs the optional ``diffusers`` package.
"""
from ldm.interop.export import DTYPES, ExportResult, export_checkpoint, export_model, push_to_hub, scheduler_config
from ldm.interop.importer import build_template, import_folder, read_weights
from ldm.interop.weights import ConversionError

__all__ = ["DTYPES", "ConversionError", "ExportResult", "build_template", "export_checkpoint", "export_model",
           "import_folder", "push_to_hub", "read_weights", "scheduler_config"]
