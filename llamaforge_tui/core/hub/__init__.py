"""The Hugging Face cache (scan, status, deletion) and downloads through ``huggingface_hub``. May import
``gguf`` and the shared core modules; never ``ollama``."""
