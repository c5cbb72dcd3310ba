"""The embedded default of ``spectra track``: a tiny pre-trained Llama (``tiny-llama/``) and a
math-QA set (``math_qa.jsonl``), shipped inside the package and found with importlib.resources,
so an installed spectra needs no checkout. How they were made: ``data/`` in the repository."""

from importlib.resources import files
from pathlib import Path

ROOT = Path(str(files(__name__)))  # a folder on disk: transformers loads the model from a path
MODEL = ROOT / "tiny-llama"
DATA = ROOT / "math_qa.jsonl"
